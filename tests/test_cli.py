"""The `stereodsc` command line: every command teaches with --help, and errors name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from stereodsc.cli import build_parser, main
from stereodsc.errors import ConfigError
from tiny_models import bundle_dir

COMMANDS = ("train", "calibrate", "edge", "host", "export", "encode", "decode", "eval", "keys", "models", "demo")


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as top:
        main(["--help"])
    assert top.value.code == 0
    text = capsys.readouterr().out
    assert all(cmd in text for cmd in COMMANDS)
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as sub:
            main([cmd, "--help"])
        assert sub.value.code == 0
        assert "usage: stereodsc " + cmd in capsys.readouterr().out
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(COMMANDS)  # type: ignore[union-attr]


def test_encode_decode_round_trip_and_clear_errors(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stereodsc.sample import drive_path

    bundle = bundle_dir(tmp_path_factory, "stereo")
    left = drive_path() / "image_02" / "data" / "0000000000.png"
    right = drive_path() / "image_03" / "data" / "0000000000.png"
    frame = tmp_path / "right.sdf"
    assert main(["encode", str(right), "--model", str(bundle), "--codec", "side_info", "-o", str(frame)]) == 0
    assert frame.stat().st_size > 37
    # A side-information frame without --side: refused, with the fix named.
    assert main(["decode", str(frame), "--model", str(bundle), "-o", str(tmp_path / "x.png")]) == 2
    assert "--side" in capsys.readouterr().err
    out = tmp_path / "right.png"
    assert main(["decode", str(frame), "--model", str(bundle), "--side", str(left), "-o", str(out)]) == 0
    assert out.is_file()
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_keys_new_writes_a_pair(tmp_path: Path) -> None:
    assert main(["keys", "new", "cam1", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "cam1.key").is_file() and (tmp_path / "cam1.key_secret").is_file()
    assert main(["keys", "new", "cam1", "--dir", str(tmp_path)]) == 2  # never overwrites a key


def test_models_lists_every_shipped_bundle_and_configs_name_them(capsys: pytest.CaptureFixture[str]) -> None:
    from stereodsc.bundle import load_bundle
    from stereodsc.bundles import resolve_bundle, shipped_bundles

    shipped = shipped_bundles()
    assert "default" in shipped
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, folder in shipped.items():
        bundle = load_bundle(folder)
        assert f"{name}: bundle {bundle.id[:16]}" in out
        assert out.count("lambda") >= sum(len(c.qualities) for c in bundle.codecs.values())
        assert resolve_bundle(name) == folder  # a config may say bundle = "<name>"
    assert resolve_bundle("") == shipped["default"]
    assert resolve_bundle("some/folder") == Path("some/folder")  # loading it will say what is wrong
    with pytest.raises(ConfigError, match="neither a folder nor a shipped bundle"):
        resolve_bundle("no-such-bundle")


def test_an_empty_bundle_setting_means_the_shipped_default_even_beside_a_local_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stereodsc.bundles import resolve_bundle, shipped_bundles

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert resolve_bundle("") == shipped_bundles()["default"]
    assert resolve_bundle("default") == Path("default")  # a folder named in a config wins
