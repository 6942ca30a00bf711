"""``stereodsc eval --held-out`` (the native mix's held-out split) and the rig figure of ``--side decoded``
(both cameras: x by the side-information codec, y by the intra codec that decoded x's side image).

The held-out tests build a fake data tree with the mix's folder names (no dependency on
../shared/data). The rig tests check arithmetic between records (bytes add up, qualities average),
never absolute PSNR or bpp values, which vary with the CPU's vector width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stereodsc.cli import build_parser
from stereodsc.errors import ConfigError, DataError
from stereodsc.eval.rd import Record
from stereodsc.eval.run import RigSpec, load_pairs, rig_bd_table, rig_record, rig_records, run_eval
from stereodsc.images import write_rgb
from stereodsc.train.datasets import KITTI_DRIVE, MIX_SOURCES, held_out_names, native_mix_pairs
from tiny_models import bundle_dir

DRIVE_FRAMES = 25
OTHER_PAIRS = {
    "kitti_odometry_mini": [f"seq{s}_{f}" for s in ("08", "09", "10", "11") for f in ("000000", "000004", "000008")],
    "middlebury2014_trainingQ": ["Adirondack", "Playroom", "Vintage"],
    "sid_mini": ["City_Rain_Day_001", "City_Rain_Day_013"],
}
EXPECTED = {
    KITTI_DRIVE: [f"{i:010d}_R" for i in range(DRIVE_FRAMES - 20, DRIVE_FRAMES)],
    "kitti_odometry_mini": [f"seq{s}_{f}_R" for s in ("09", "10") for f in ("000000", "000004", "000008")],
    "middlebury2014_trainingQ": ["Playroom_R", "Vintage_R"],
    "sid_mini": ["City_Rain_Day_013_R"],
}


@pytest.fixture(scope="module")
def data_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four data sets of the native mix with tiny 16x32 images: a drive of 25 frames, pair folders
    holding their held-out pairs and a few others."""
    root = tmp_path_factory.mktemp("shared_data")
    image = np.zeros((16, 32, 3), np.uint8)
    for camera in ("image_02", "image_03"):
        folder = root / KITTI_DRIVE / camera / "data"
        folder.mkdir(parents=True)
        for i in range(DRIVE_FRAMES):
            write_rgb(folder / f"{i:010d}.png", image)
    for folder, names in OTHER_PAIRS.items():
        (root / folder).mkdir()
        for name in names:
            write_rgb(root / folder / f"{name}_L.png", image)
            write_rgb(root / folder / f"{name}_R.png", image)
    return root


def test_the_fake_tree_covers_every_mix_source() -> None:
    assert set(EXPECTED) == {s.folder for s in MIX_SOURCES.values()}


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_held_out_selects_exactly_the_split(data_tree: Path, folder: str) -> None:
    pairs = load_pairs(data_tree / folder, protocol="native", held_out=True)
    assert [p.name for p in pairs] == EXPECTED[folder]
    # the same pairs that training holds out (one source of truth: held_out_names)
    _, _, val = native_mix_pairs(data_tree)
    held = sorted(p.x.stem.removesuffix("_R") for p in val if folder in p.x.parts)
    assert held == [n.removesuffix("_R") for n in EXPECTED[folder]]
    # --max-images applies after the split; every pair otherwise
    first = load_pairs(data_tree / folder, "native", held_out=True, max_images=1)
    assert [p.name for p in first] == EXPECTED[folder][:1]
    assert len(load_pairs(data_tree / folder, "native")) > len(pairs)


def test_held_out_refuses_a_foreign_folder_frames_and_a_broken_split(data_tree: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "pairs"
    foreign.mkdir()
    write_rgb(foreign / "a_L.png", np.zeros((16, 32, 3), np.uint8))
    write_rgb(foreign / "a_R.png", np.zeros((16, 32, 3), np.uint8))
    assert held_out_names(foreign) is None
    with pytest.raises(ConfigError, match="not a data set of the native mix") as err:
        run_eval([], foreign, codecs=[], out=tmp_path / "out", held_out=True, progress=False)
    assert all(s.folder in str(err.value) for s in MIX_SOURCES.values())
    with pytest.raises(ConfigError, match="drop --frames"):
        load_pairs(data_tree / "sid_mini", "native", frames="-1:", held_out=True)
    broken = tmp_path / "sid_mini"
    broken.mkdir()
    write_rgb(broken / "City_Rain_Day_001_L.png", np.zeros((16, 32, 3), np.uint8))
    write_rgb(broken / "City_Rain_Day_001_R.png", np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(DataError, match="City_Rain_Day_013"):
        load_pairs(broken, "native", held_out=True)
    assert not (tmp_path / "out").exists()
    args = build_parser().parse_args(["eval", "--model", "default", "--pairs", "p", "--out", "o", "--held-out"])
    assert args.held_out is True


def record(method: str, quality: str, image: str, payload: int, psnr: float, ms_ssim: float) -> Record:
    """A hand-made record of a 10x20 image (wire = payload + 3 bytes, estimate = payload bpp)."""
    bpp = 8 * payload / 200
    return Record(method, quality, image, payload, payload + 3, bpp, 8 * (payload + 3) / 200, bpp, psnr, ms_ssim)


def test_rig_record_adds_bytes_and_averages_quality() -> None:
    x = record("ndic", "q0", "a_R", 100, 30.0, 0.9)
    y = record("balle2017", "q1", "a_R", 300, 32.0, 0.95)
    rig = rig_record("ndic+balle2017", "q0", x, y, 10, 20)
    assert (rig.method, rig.quality, rig.image) == ("ndic+balle2017", "q0", "a_R")
    assert (rig.payload_bytes, rig.wire_bytes) == (400, 406)
    assert rig.payload_bpp == 8 * 400 / (2 * 10 * 20) and rig.wire_bpp == 8 * 406 / (2 * 10 * 20)
    assert rig.psnr == 31.0 and rig.ms_ssim == pytest.approx(0.925)
    assert rig.estimated_bpp == pytest.approx((x.payload_bpp + y.payload_bpp) / 2)
    spec = RigSpec("side_info", "ndic", "balle2017", (("q0", "q1"),))
    assert rig_records([spec], [x], [y], {"a_R": (10, 20)}) == [rig]
    with pytest.raises(DataError, match="no record of y"):
        rig_records([spec], [x], [], {"a_R": (10, 20)})


def test_rig_bd_table_compares_side_information_rigs_with_both_intra_and_both_anchor() -> None:
    """A side-information rig at half the both-intra rig's bytes for equal quality: BD-rate -50 %."""
    specs = [
        RigSpec("side_info", "si", "intra", (("q0", "q0"), ("q1", "q1"), ("q2", "q2"))),
        RigSpec("intra", "intra", "intra", (("q0", "q0"), ("q1", "q1"), ("q2", "q2"))),
        RigSpec("anchor", "hevc", "hevc", (("10", "10"), ("20", "20"), ("30", "30"))),
    ]
    records = []
    for i, (q, a) in enumerate((("q0", "10"), ("q1", "20"), ("q2", "30"))):
        quality = (28.0 + 2 * i, 0.9 + 0.02 * i)
        records += [
            record("si+intra", q, "a", 100 * 2**i, *quality),
            record("intra+intra", q, "a", 200 * 2**i, *quality),
            record("hevc+hevc", a, "a", 400 * 2**i, *quality),
        ]
    table = rig_bd_table(specs, records, notes=[])
    assert set(table) == {"si+intra vs intra+intra", "si+intra vs hevc+hevc", "intra+intra vs hevc+hevc"}
    for key, expected in (("si+intra vs intra+intra", -50.0), ("si+intra vs hevc+hevc", -75.0)):
        assert table[key]["psnr"] == pytest.approx(expected) and table[key]["ms_ssim"] == pytest.approx(expected)


def test_rig_section_prices_both_cameras(
    tmp_path_factory: pytest.TempPathFactory, pair_folder: Path, tmp_path: Path
) -> None:
    stereo = bundle_dir(tmp_path_factory, "stereo")  # balle2017 intra + ndic side_info, 2 qualities each
    docs: dict[str, Any] = {}
    for side in ("original", "decoded"):
        path = run_eval(
            [stereo],
            pair_folder,
            protocol="native",
            codecs=["jpeg"],
            out=tmp_path / side,
            side=side,
            both_directions=side == "decoded",  # x = left too: y's intra coding is also an x record
            progress=False,
        )
        docs[side] = json.loads(path.read_text())
    assert "rig" not in docs["original"]
    assert "Not computed with --side original" in (tmp_path / "original" / "bd_rate.md").read_text()
    doc, rig = docs["decoded"], docs["decoded"]["rig"]
    assert {n: (m["kind"], m["x"], m["y"]) for n, m in rig["methods"].items()} == {
        "ndic+balle2017": ("side_info", "ndic", "balle2017"),
        "balle2017+balle2017": ("intra", "balle2017", "balle2017"),
        "jpeg+jpeg": ("anchor", "jpeg", "jpeg"),
    }
    used = doc["meta"]["side_decoded_with"]["ndic"]
    assert {q: f"balle2017 {e['y']}" for q, e in rig["methods"]["ndic+balle2017"]["qualities"].items()} == used
    xs = {(r["method"], r["quality"], r["image"]): r for r in doc["records"]}
    ys = {(r["method"], r["quality"], r["image"]): r for r in rig["reference_view_records"]}
    # y coded by the intra codec at every quality (both-intra) and by the anchor at every quality
    assert {k[:2] for k in ys} == {k[:2] for k in xs if k[0] in ("balle2017", "jpeg")}
    assert len(rig["records"]) == 4 * (2 + 2 + len({k[1] for k in xs if k[0] == "jpeg"}))
    for r in rig["records"]:
        entry = rig["methods"][r["method"]]
        q = entry["qualities"][r["quality"]]
        x, y = xs[(entry["x"], q["x"], r["image"])], ys[(entry["y"], q["y"], r["image"])]
        assert r["payload_bytes"] == x["payload_bytes"] + y["payload_bytes"]
        assert r["wire_bytes"] == x["wire_bytes"] + y["wire_bytes"]
        assert r["payload_bpp"] == pytest.approx(8 * r["payload_bytes"] / (2 * 100 * 200))
        assert r["payload_bytes"] > x["payload_bytes"]
        assert r["psnr"] == pytest.approx((x["psnr"] + y["psnr"]) / 2)
        assert r["ms_ssim"] == pytest.approx((x["ms_ssim"] + y["ms_ssim"]) / 2)
    # y of pair a_R is the left view, which pair a_L codes as x: the same codec gives the same bytes
    for method, q, image in ys:
        mirror = xs[(method, q, image[:-1] + ("L" if image.endswith("_R") else "R"))]
        assert ys[(method, q, image)]["payload_bytes"] == mirror["payload_bytes"]
        assert ys[(method, q, image)]["psnr"] == mirror["psnr"]
    assert set(rig["bd_rate"]) == {
        "ndic+balle2017 vs balle2017+balle2017",
        "ndic+balle2017 vs jpeg+jpeg",
        "balle2017+balle2017 vs jpeg+jpeg",
    }
    assert rig["headline"] == ["ndic+balle2017 vs balle2017+balle2017"]  # + "vs hevc+hevc" when HEVC ran
    assert set(rig["curves"]) == set(rig["methods"])
    md = (tmp_path / "decoded" / "bd_rate.md").read_text()
    assert "## Rig: both cameras" in md and "| **ndic+balle2017** | **balle2017+balle2017** |" in md
    assert (tmp_path / "decoded" / "rig" / "rd_psnr.png").is_file()
    assert (tmp_path / "decoded" / "rig" / "rd_ms_ssim.png").is_file()


def test_reference_above_codes_the_reference_camera_at_a_better_quality(
    tmp_path_factory: pytest.TempPathFactory, pair_folder: Path, tmp_path: Path
) -> None:
    from stereodsc.eval.learned import quality_label

    stereo = bundle_dir(tmp_path_factory, "stereo")  # balle2017 intra + ndic side_info, 2 qualities each
    path = run_eval(
        [stereo],
        pair_folder,
        protocol="native",
        codecs=[],
        out=tmp_path,
        side="decoded",
        reference_above=1,
        progress=False,
    )
    doc = json.loads(path.read_text())
    q0, q1 = quality_label(0), quality_label(1)
    # one above the matching quality, capped at the intra codec's top one
    assert doc["meta"]["side_decoded_with"]["ndic"] == {q0: f"balle2017 {q1}", q1: f"balle2017 {q1}"}
    ys = {(r["quality"], r["image"]): r for r in doc["rig"]["reference_view_records"]}
    xs = {(r["method"], r["quality"], r["image"]): r for r in doc["records"]}
    rig = [r for r in doc["rig"]["records"] if r["method"] == "ndic+balle2017"]
    assert len(rig) == 2 * len({r["image"] for r in doc["records"]})
    for r in rig:
        x, y = xs[("ndic", r["quality"], r["image"])], ys[(q1, r["image"])]
        assert r["payload_bytes"] == x["payload_bytes"] + y["payload_bytes"]
    for side, above in (("original", 1), ("decoded", -1)):
        with pytest.raises(ConfigError, match="--reference-above"):
            run_eval(
                [stereo],
                pair_folder,
                protocol="native",
                codecs=[],
                out=tmp_path / "bad",
                side=side,
                reference_above=above,
                progress=False,
            )
