"""``stereodsc eval`` for learned codecs: real bytes through the deployed path, results.json, the
BD-rate table (anchors and the side-information headline), plots, visualisations, input errors.

Bundles and checkpoints are the tiny ones of tiny_models.py (untrained: their PSNR is low, so the
learned curves rarely overlap the anchors; the BD computation itself is checked on built records).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stereodsc.bundle import load_bundle
from stereodsc.errors import ConfigError, DataError
from stereodsc.eval.learned import LearnedMethod, side_references
from stereodsc.eval.metrics import psnr
from stereodsc.eval.preprocess import paper_protocol
from stereodsc.eval.rd import Record
from stereodsc.eval.run import build_bd_table, headline_keys, parse_frames, run_eval
from stereodsc.images import read_rgb, write_rgb
from tiny_models import bundle_dir, checkpoint, sample_pair

RECORD_FIELDS = {f.name for f in dataclasses.fields(Record)}


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """balle2017 intra + ndic side_info, 2 qualities each."""
    return bundle_dir(tmp_path_factory, "stereo")


@pytest.fixture(scope="module")
def paper_run(stereo: Path, sample_drive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval_paper")
    path = run_eval(
        [stereo], sample_drive, codecs=["jpeg", "webp"], out=out, max_images=2, visualize=True, progress=False
    )
    return path, json.loads(path.read_text())


def test_results_json_records_real_bytes(paper_run: tuple[Path, dict]):
    path, doc = paper_run
    assert path.name == "results.json"
    assert set(doc) == {"bd_rate", "curves", "records", "meta"}
    records = doc["records"]
    assert {r["method"] for r in records} == {"balle2017", "ndic", "jpeg", "webp"}
    assert all(set(r) == RECORD_FIELDS for r in records)
    learned = [r for r in records if r["method"] in ("balle2017", "ndic")]
    assert len(learned) == 2 * 2 * 2  # methods x qualities x images
    assert {r["quality"] for r in learned} == {"q0", "q1"}
    assert {r["image"] for r in records} == {"0000000000_R", "0000000001_R"}
    for r in records:
        assert 0 < r["payload_bytes"] <= r["wire_bytes"]
        assert r["payload_bpp"] == pytest.approx(8 * r["payload_bytes"] / (128 * 256))
        assert r["wire_bpp"] == pytest.approx(8 * r["wire_bytes"] / (128 * 256))
        assert np.isfinite(r["psnr"]) and 0 <= r["ms_ssim"] <= 1
    for r in learned:
        # the rANS payload is within a few bytes of the tables' information content
        assert abs(r["payload_bpp"] - r["estimated_bpp"]) * 128 * 256 / 8 < 16
        assert r["wire_bytes"] - r["payload_bytes"] < 64  # the frame header + CRC
    assert all(r["estimated_bpp"] is None for r in records if r["method"] in ("jpeg", "webp"))
    meta = doc["meta"]
    assert meta["protocol"] == "paper" and meta["side"] == "original" and meta["n_images"] == 2
    assert meta["ms_ssim_win"] == 7 and meta["image_size"] == [128, 256]
    assert meta["headline"] == ["ndic vs balle2017"]
    assert meta["methods"]["ndic"]["kind"] == "learned" and meta["methods"]["ndic"]["uses_side_info"]
    assert meta["methods"]["balle2017"]["qualities"]["q1"]["lmbda"] == pytest.approx(0.02)
    assert meta["methods"]["jpeg"]["kind"] == "anchor"


def test_bd_rate_table_structure(paper_run: tuple[Path, dict]):
    path, doc = paper_run
    table = doc["bd_rate"]
    expected = {f"{m} vs {a}" for m in ("balle2017", "ndic", "jpeg", "webp") for a in ("jpeg", "webp") if m != a} | {
        "ndic vs balle2017"
    }
    assert set(table) == expected  # no "anchor vs learned" entries
    for key, entry in table.items():
        assert set(entry) == {"psnr", "ms_ssim"}
        for metric, value in entry.items():
            if value is None:  # the reason is in the notes
                assert any(note.startswith(f"{key} ({metric})") for note in doc["meta"]["notes"])
            else:
                assert np.isfinite(value)
    assert table["webp vs jpeg"]["psnr"] is not None
    markdown = path.with_name("bd_rate.md").read_text()
    assert "| **ndic** | **balle2017** |" in markdown and "| webp | jpeg |" in markdown
    for plot in ("rd_psnr.png", "rd_ms_ssim.png", "full_range/rd_psnr.png"):
        assert (path.parent / plot).stat().st_size > 1000


def test_headline_bd_rate_when_curves_overlap(stereo: Path):
    bundle = load_bundle(stereo)
    methods = [LearnedMethod("balle2017", "b", bundle, "intra"), LearnedMethod("ndic", "b", bundle, "side_info")]
    rates, psnrs, ssims = (0.1, 0.2, 0.4, 0.8), (30.0, 32.0, 34.0, 36.0), (0.95, 0.97, 0.98, 0.99)

    def rec(method: str, q: int, image: str, scale: float) -> Record:
        bpp = rates[q] * scale
        nbytes = int(bpp * 128 * 256 / 8)
        return Record(
            method=method,
            quality=f"q{q}",
            image=image,
            payload_bytes=nbytes,
            wire_bytes=nbytes + 40,
            payload_bpp=bpp,
            wire_bpp=bpp,
            estimated_bpp=None,
            psnr=psnrs[q],
            ms_ssim=ssims[q],
        )

    records = [rec(m, q, i, s) for m, s in (("balle2017", 1.0), ("ndic", 0.9)) for q in range(4) for i in "ab"]
    records += [rec("jpeg", q, i, 2.0) for q in range(4) for i in "ab"]
    notes: list[str] = []
    table = build_bd_table(records, ["jpeg"], methods, notes)
    assert headline_keys(methods) == ["ndic vs balle2017"]
    assert table["ndic vs balle2017"]["psnr"] == pytest.approx(-10.0)
    assert table["ndic vs balle2017"]["ms_ssim"] == pytest.approx(-10.0)
    assert table["ndic vs jpeg"]["psnr"] == pytest.approx(-55.0)
    assert "jpeg vs balle2017" not in table and "balle2017 vs ndic" not in table
    assert notes == []


def test_visualize_common_and_private_information(paper_run: tuple[Path, dict], sample_drive: Path):
    path, doc = paper_run
    vis = doc["meta"]["visualize"]
    assert vis["files"] and all((path.parent / f).is_file() for f in vis["files"])
    for q in ("q0", "q1"):
        folder = path.parent / "visualize" / "ndic" / q
        for image in ("0000000000_R", "0000000001_R"):
            decoded, private, common = (read_rgb(folder / f"{image}_{k}.png") for k in ("decoded", "private", "common"))
            assert decoded.shape == private.shape == common.shape == (128, 256, 3)
            assert np.any(decoded != private) and np.any(decoded != common) and np.any(private != common)
            assert (folder / f"{image}_panel.png").is_file()
    points = vis["correlation_gain"]["points"]
    assert len(points) == 2 * 2  # qualities x images
    assert all(-1 <= p["correlation"] <= 1 and np.isfinite(p["psnr_gain_db"]) for p in points)
    assert (path.parent / vis["correlation_gain"]["plot"]).is_file()
    # the host graph run directly on the symbols gives what the wire path decoded
    x = paper_protocol(read_rgb(sample_drive / "image_03" / "data" / "0000000001.png"))
    decoded = read_rgb(path.parent / "visualize" / "ndic" / "q0" / "0000000001_R_decoded.png")
    record = next(
        r for r in doc["records"] if (r["method"], r["quality"], r["image"]) == ("ndic", "q0", "0000000001_R")
    )
    assert psnr(x, decoded) == pytest.approx(record["psnr"])


def test_checkpoints_form_curves_and_dsin_shows_side_syn(tmp_path_factory: pytest.TempPathFactory, sample_drive: Path):
    ckpts = [checkpoint(tmp_path_factory, n) for n in ("balle_hi", "dsin", "balle_lo")]
    out = tmp_path_factory.mktemp("eval_ckpt")
    path = run_eval(ckpts, sample_drive, codecs=[], out=out, max_images=1, visualize=True, progress=False)
    doc = json.loads(path.read_text())
    methods = doc["meta"]["methods"]
    assert set(methods) == {"balle2017", "dsin"}
    # the two balle2017 checkpoints share one config: one curve, qualities ordered by lambda
    assert [q["checkpoint"] for q in methods["balle2017"]["qualities"].values()] == [str(ckpts[2]), str(ckpts[0])]
    assert doc["meta"]["headline"] == ["dsin vs balle2017"]
    assert set(doc["bd_rate"]) == {"dsin vs balle2017"}
    folder = out / "visualize" / "dsin" / "q0"
    side_syn, x_dec = read_rgb(folder / "0000000000_R_side_syn.png"), read_rgb(folder / "0000000000_R_x_dec.png")
    assert side_syn.shape == x_dec.shape == (128, 256, 3) and np.any(side_syn != x_dec)
    assert (out / "visualize" / "correlation_gain.png").is_file()


def test_native_protocol_counts_original_pixels_and_decoded_side(stereo: Path, pair_folder: Path, tmp_path: Path):
    docs: dict[str, Any] = {}
    for side in ("original", "decoded"):
        path = run_eval(
            [stereo],
            pair_folder,
            protocol="native",
            codecs=[],
            out=tmp_path / side,
            side=side,
            frames="1:",
            both_directions=True,
            progress=False,
        )
        docs[side] = json.loads(path.read_text())
    doc = docs["decoded"]
    assert doc["meta"]["images"] == ["b_R", "b_L"] and doc["meta"]["image_size"] == [100, 200]
    assert doc["meta"]["side"] == "decoded" and doc["meta"]["ms_ssim_win"] == 7
    assert doc["meta"]["side_decoded_with"] == {"ndic": {"q0": "balle2017 q0", "q1": "balle2017 q1"}}
    for r in doc["records"]:
        assert r["payload_bpp"] == pytest.approx(8 * r["payload_bytes"] / (100 * 200))  # not the padded 112x208
    psnr = {s: {(r["method"], r["quality"], r["image"]): r["psnr"] for r in d["records"]} for s, d in docs.items()}
    assert all(psnr["original"][k] == psnr["decoded"][k] for k in psnr["original"] if k[0] == "balle2017")
    assert any(psnr["original"][k] != psnr["decoded"][k] for k in psnr["original"] if k[0] == "ndic")


def test_parse_frames():
    assert parse_frames("-20:", 108) == range(88, 108)
    assert list(parse_frames("3", 10)) == [3] and list(parse_frames("-1", 10)) == [9]
    assert list(parse_frames(":2", 10)) == [0, 1]
    for bad in ("x", "1:2:3:4", "50:", "a:b"):
        with pytest.raises(ConfigError, match="frames"):
            parse_frames(bad, 10)


def test_bad_inputs_raise_typed_errors_naming_the_fix(
    stereo: Path, sample_drive: Path, pair_folder: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
):
    def run(**kw: Any) -> Path:
        args: dict[str, Any] = {"models": [stereo], "pairs": sample_drive, "codecs": [], "out": tmp_path / "o"}
        return run_eval(**{**args, **kw, "progress": False})

    with pytest.raises(DataError, match="KITTI raw drive folder"):
        run(pairs=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="valid anchors"):
        run(codecs=["jpeg", "bpg"])
    with pytest.raises(ConfigError, match="'paper'"):
        run(protocol="full")
    with pytest.raises(ConfigError, match="'decoded'"):
        run(side="reconstructed")
    with pytest.raises(ConfigError, match="at least 1"):
        run(max_images=0)
    with pytest.raises(ConfigError, match="bundle folder"):
        run(models=[tmp_path / "missing.pt"])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        run(models=[])
    with pytest.raises(ConfigError, match="side-information model"):
        run(models=[checkpoint(tmp_path_factory, "balle_lo")], side="decoded")
    odd = tmp_path / "odd"
    odd.mkdir()
    x, y = sample_pair(64, 128)
    write_rgb(odd / "p_R.png", x)
    write_rgb(odd / "p_L.png", y[:, :96])
    with pytest.raises(DataError, match="one size"):
        run(pairs=odd, protocol="native")
    assert not (tmp_path / "o").exists()  # nothing was written


def test_side_decoded_needs_one_intra_partner(stereo: Path):
    bundle = load_bundle(stereo)
    intra, si = LearnedMethod("balle2017", "b", bundle, "intra"), LearnedMethod("ndic", "b", bundle, "side_info")
    assert side_references([intra, si], "original") == {}
    assert side_references([intra, si], "decoded") == {"ndic": intra}
    with pytest.raises(ConfigError, match="exactly one intra"):
        side_references([si], "decoded")
    with pytest.raises(ConfigError, match="exactly one intra"):
        side_references([intra, LearnedMethod("balle2017@x", "b", bundle, "intra"), si], "decoded")
    with pytest.raises(ConfigError, match="drop --side"):
        side_references([intra], "decoded")
    # A side-information-only source (the shipped "dsin" bundle) pairs with the intra codec of another.
    dsin = LearnedMethod("dsin", "d", bundle, "side_info")
    assert side_references([intra, si, dsin], "decoded") == {"ndic": intra, "dsin": intra}
    assert headline_keys([intra, si, dsin]) == ["ndic vs balle2017", "dsin vs balle2017"]
    other = LearnedMethod("balle2017@x", "x", bundle, "intra")
    with pytest.raises(ConfigError, match="exactly one intra"):  # two intra codecs elsewhere: ambiguous
        side_references([intra, other, dsin], "decoded")
