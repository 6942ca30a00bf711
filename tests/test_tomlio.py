"""TOML output (tomli_w): what dump_toml writes, parse_toml reads back unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stereodsc.tomlio import dump_toml, parse_toml


def test_a_string_with_a_newline_and_quotes_round_trips() -> None:
    text = 'line one\nline "two"\twith a tab, a backslash \\ and é'
    tables = {"camera": {"path": text, "pipeline": "nvarguscamerasrc ! appsink drop=1\r\n"}}
    assert parse_toml(dump_toml(tables), "<test>") == tables


def test_numpy_numbers_and_arrays_round_trip_as_plain_numbers() -> None:
    tables = {
        "codec": {
            "quality": np.int64(2),
            "camera_id": np.uint8(7),
            "fps": np.float32(12.5),
            "scale": np.float64(0.1),
            "loop": np.bool_(True),
            "size": np.array([128, 256], dtype=np.int32),
            "k": np.eye(2),
            "pair": (np.int16(1), 2.0),
        }
    }
    back = parse_toml(dump_toml(tables), "<test>")["codec"]
    assert back == {
        "quality": 2,
        "camera_id": 7,
        "fps": 12.5,
        "scale": 0.1,
        "loop": True,
        "size": [128, 256],
        "k": [[1.0, 0.0], [0.0, 1.0]],
        "pair": [1, 2.0],
    }
    assert type(back["quality"]) is int and type(back["loop"]) is bool


def test_special_floats_and_sub_tables_round_trip() -> None:
    tables = {"pairing": {"tolerance_ms": math.inf, "limits": {"max_pending": 64, "deadline_ms": 1e3}}}
    back = parse_toml(dump_toml(tables), "<test>")
    assert back == tables


def test_a_value_toml_cannot_hold_names_its_key() -> None:
    with pytest.raises(TypeError, match=r"codec\.bundle = None"):
        dump_toml({"codec": {"bundle": None}})
    with pytest.raises(TypeError, match=r"camera\.sizes\[1\]"):
        dump_toml({"camera": {"sizes": [1, object()]}})


def test_a_dotted_table_name_is_a_path_as_in_a_toml_header() -> None:
    text = dump_toml({"model": {"name": "balle2017"}, "model.options": {"channels": np.int64(8)}})
    assert "[model.options]" in text
    assert parse_toml(text, "<test>") == {"model": {"name": "balle2017", "options": {"channels": 8}}}
