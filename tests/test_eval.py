"""Evaluation: metrics, anchors and their lean payloads, BD-rate, RD records, plots, preprocessing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stereodsc.codec import geometry
from stereodsc.errors import BitstreamError, ConfigError, DataError
from stereodsc.eval import containers, metrics, preprocess
from stereodsc.eval.anchors import ANCHOR_NAMES, available_anchors
from stereodsc.eval.bdrate import BDRateError, bd_psnr, bd_quality, bd_rate, monotone_curve
from stereodsc.eval.plots import plot_rd_curves
from stereodsc.eval.rd import Record, aggregate, bd_rate_table, run_anchors, write_results


def photo_like(h: int = 128, w: int = 256) -> np.ndarray:
    """Closed-form (no RNG, so stable across numpy versions) photo-like RGB image.

    A sky gradient, a curved road, a disc and a box with hard edges, and a fine texture.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / w, yy / h
    img = np.stack(
        [90 + 120 * v + 20 * np.sin(6.0 * u), 110 + 80 * v + 25 * np.cos(4.0 * u + 1.0), 200 - 110 * v],
        axis=-1,
    )
    img[v > 0.6 + 0.1 * np.sin(3.0 * u)] = [70.0, 70.0, 75.0]
    img[(xx - 0.3 * w) ** 2 + (yy - 0.45 * h) ** 2 < (0.15 * h) ** 2] = [200.0, 40.0, 30.0]
    img[(np.abs(xx - 0.7 * w) < 0.08 * w) & (np.abs(yy - 0.4 * h) < 0.2 * h)] = [30.0, 120.0, 60.0]
    texture = 12.0 * np.sin(1.7 * xx + 0.3 * yy) * np.sin(0.9 * yy - 2.3 * xx) + 6.0 * np.sin(0.37 * xx * yy / 7.0)
    img += texture[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def blur_and_checker(img: np.ndarray) -> np.ndarray:
    """Deterministic distortion: 4x4 block averaging plus a small checker pattern."""
    h, w = img.shape[:2]
    f = img.astype(np.float64).reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3)).repeat(4, 0).repeat(4, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = 5.0 * ((xx // 3 + yy // 5) % 2 - 0.5)
    return np.clip(np.round(f + checker[..., None]), 0, 255).astype(np.uint8)


def column_ripple(img: np.ndarray) -> np.ndarray:
    w = img.shape[1]
    return np.clip(img.astype(int) + ((np.arange(w) % 7) - 3)[None, :, None] * 4, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo_like()


# ----------------------------------------------------------------------------------------------- metrics


def reference_ms_ssim(a: np.ndarray, b: np.ndarray, win_size: int = 7) -> float:
    """Straightforward MS-SSIM: full 2-D Gaussian kernel, scipy 'valid' correlation, loops over channels."""
    from scipy.signal import correlate2d

    coords = np.arange(win_size) - win_size // 2
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    values = []
    for ch in range(a.shape[2]):
        x, y = a[:, :, ch].astype(np.float64), b[:, :, ch].astype(np.float64)
        product = 1.0
        for level, weight in enumerate(weights):

            def filt(z: np.ndarray) -> np.ndarray:
                return correlate2d(z, kernel, mode="valid")

            mx, my = filt(x), filt(y)
            sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
            cs = np.mean((2 * sxy + c2) / (sxx + syy + c2))
            ssim = np.mean((2 * mx * my + c1) / (mx * mx + my * my + c1) * (2 * sxy + c2) / (sxx + syy + c2))
            product *= max(ssim if level == len(weights) - 1 else cs, 0.0) ** weight
            if level < len(weights) - 1:  # torch avg_pool2d(2, padding=side % 2), zeros counted
                ph, pw = x.shape[0] % 2, x.shape[1] % 2
                x, y = np.pad(x, ((ph, ph), (pw, pw))), np.pad(y, ((ph, ph), (pw, pw)))
                hh, ww = x.shape[0] // 2, x.shape[1] // 2
                x = x[: 2 * hh, : 2 * ww].reshape(hh, 2, ww, 2).mean(axis=(1, 3))
                y = y[: 2 * hh, : 2 * ww].reshape(hh, 2, ww, 2).mean(axis=(1, 3))
        values.append(product)
    return float(np.mean(values))


@pytest.mark.parametrize(
    ("shape", "distort", "pytorch_msssim_value"),
    [
        # Computed once with pytorch_msssim 1.0.0 (float64 tensors, data_range=255, win_size=7). Its
        # window is built in float32, which moves the value by ~2e-6; with a float64 window the two agree
        # to the last digit.
        ((128, 256), blur_and_checker, 0.904403106541384),
        ((131, 263), column_ripple, 0.8965387594800163),  # odd sides: zero-padded pooling
    ],
)
def test_ms_ssim_matches_reference_and_pytorch_msssim(shape, distort, pytorch_msssim_value):
    a = photo_like(*shape)
    b = distort(a)
    value = metrics.ms_ssim(a, b)
    assert value == pytest.approx(reference_ms_ssim(a, b), abs=1e-10)
    assert value == pytest.approx(pytorch_msssim_value, abs=1e-5)


def test_ms_ssim_identity_and_monotone_in_noise(image):
    assert metrics.ms_ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(image.shape)
    values = [metrics.ms_ssim(image, np.clip(image + s * noise, 0, 255).astype(np.uint8)) for s in (2, 6, 15, 40)]
    assert all(x > y for x, y in itertools.pairwise(values))
    assert 0.0 < values[-1] < values[0] < 1.0


def test_ms_ssim_rejects_bad_shapes(image):
    with pytest.raises(DataError, match="97"):
        metrics.ms_ssim(image[:96], image[:96])
    assert metrics.ms_ssim(image[:97], image[:97]) == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"\(128, 256, 3\) vs \(128, 255, 3\)"):
        metrics.ms_ssim(image, image[:, :255])
    with pytest.raises(DataError, match="161"):
        metrics.ms_ssim(image, image, win_size=11)


def test_psnr_bpp_and_db():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.psnr(a, a + 1) == pytest.approx(20 * math.log10(255))
    assert metrics.psnr(a, a.astype(np.float64) + 0.5) == pytest.approx(10 * math.log10(255**2 / 0.25))
    assert metrics.psnr(a, a) == math.inf
    with pytest.raises(DataError):
        metrics.psnr(a, a[:, :4])
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)
    assert metrics.bpp(1024, 128, 256) == pytest.approx(0.25)
    with pytest.raises(DataError):
        metrics.bpp(10, 0, 256)


# ----------------------------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("name", ANCHOR_NAMES)
def test_anchor_round_trip_two_qualities(name, image):
    found = available_anchors([name])
    if not found:
        pytest.skip(f"anchor {name!r} is not available here (the reason is logged)")
    anchor = found[0]
    low_q, high_q = anchor.qualities[1], anchor.qualities[len(anchor.qualities) // 2 + 1]
    low, high = anchor.encode(image, low_q), anchor.encode(image, high_q)
    for res in (low, high):
        assert res.decoded.shape == image.shape and res.decoded.dtype == np.uint8
        assert 0 < res.payload_bytes <= res.container_bytes
    assert high.payload_bytes > low.payload_bytes
    assert metrics.psnr(image, high.decoded) > metrics.psnr(image, low.decoded) > 15.0


def test_available_anchors_rejects_unknown_names():
    with pytest.raises(ConfigError, match="valid anchors: jpeg, jpeg2000, webp, avif, jpegxl, hevc"):
        available_anchors(["jpeg", "bpg"])
    with pytest.raises(DataError, match="uint8 HxWx3"):
        next(iter(available_anchors(["jpeg"]))).encode(np.zeros((8, 8), np.uint8), 50)


def _heif_bytes(image: np.ndarray, quality: int = 10) -> bytes:
    import io

    pillow_heif = pytest.importorskip("pillow_heif")
    heif = pillow_heif.from_bytes(mode="RGB", size=(image.shape[1], image.shape[0]), data=image.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=quality, chroma=444)
    return buffer.getvalue()


def test_isobmff_parser_on_real_heif(image):
    data = _heif_bytes(image)
    boxes = containers.parse_boxes(data)
    assert [b.type for b in boxes] == ["ftyp", "meta", "mdat"]
    assert sum(b.size for b in boxes) == len(data)
    hvcc = next(b for b in containers.iter_boxes(boxes) if b.type == "hvcC")
    assert [p.type for p in containers.iter_boxes(boxes) if hvcc in p.children] == ["ipco"]
    assert data[hvcc.body + 16] & 0x3 == 3, "chroma_format_idc must be 3 (4:4:4)"
    mdat = boxes[2]
    payload = containers.hevc_payload_bytes(data)
    # parameter sets (VPS+SPS+PPS, tens of bytes) + slices; everything else is container
    assert mdat.body_size + 30 < payload < mdat.body_size + hvcc.body_size
    assert len(data) - payload > 200
    with pytest.raises(BitstreamError):
        containers.parse_boxes(data[:-10])
    with pytest.raises(BitstreamError, match="hvcC"):
        containers.hevc_payload_bytes(data[: boxes[0].size] + data[boxes[1].offset + boxes[1].size :])


def test_avif_webp_jpeg_lean_payloads(image):
    imagecodecs = pytest.importorskip("imagecodecs")
    if imagecodecs.AVIF.available:
        avif = bytes(imagecodecs.avif_encode(image, level=10, pixelformat="yuv444", speed=8))
        boxes = containers.parse_boxes(avif)
        av1c = next(b for b in containers.iter_boxes(boxes) if b.type == "av1C")
        assert avif[av1c.body + 2] & 0x0C == 0, "AV1 chroma subsampling must be off (4:4:4)"
        mdat = next(b for b in boxes if b.type == "mdat")
        assert containers.av1_payload_bytes(avif) == mdat.body_size  # the sequence header is in mdat
    if imagecodecs.WEBP.available:
        webp = bytes(imagecodecs.webp_encode(image, level=10, lossless=False))
        assert containers.webp_payload_bytes(webp) == len(webp) - 20  # RIFF header + chunk header
    if imagecodecs.JPEG8.available:
        jpeg = bytes(imagecodecs.jpeg8_encode(image, level=30, subsampling="444"))
        lean = containers.strip_jpeg_metadata(jpeg)
        assert b"JFIF" in jpeg and b"JFIF" not in lean and len(lean) < len(jpeg)
        np.testing.assert_array_equal(imagecodecs.jpeg8_decode(lean), imagecodecs.jpeg8_decode(jpeg))


@pytest.mark.shared_data
def test_container_overhead_on_a_kitti_frame(kitti_drive: Path):
    import cv2

    left = kitti_drive / "image_02" / "data" / "0000000000.png"
    bgr = cv2.imread(str(left))
    assert bgr is not None, f"unreadable {left}"
    frame = preprocess.paper_protocol(bgr[:, :, ::-1])
    assert frame.shape == (128, 256, 3)
    for anchor in available_anchors(["hevc", "avif"]):
        res = anchor.encode(frame, anchor.qualities[0])
        assert 150 <= res.container_bytes - res.payload_bytes <= 600, anchor.name
        assert metrics.bpp(res.payload_bytes, 128, 256) < 0.2, anchor.name


# ----------------------------------------------------------------------------------------------- BD-rate

# The example curves of the `bjontegaard` package (FAU-LMS), whose PCHIP variant reproduces the JVET
# CTC Excel sheet to 10 decimals. Expected values computed with bjontegaard 1.3.0
# (bd_rate/bd_psnr(anchor..., test..., method, min_overlap=0)).
BJONTEGAARD_CASES = [
    (
        ([9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851]),
        ([9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987]),
        {
            "pchip": (-4.417485350589045, 0.11969278542479489),
            "cubic": (-4.420462706026296, 0.12040941911471303),
        },
    ),
    (
        ([82472.76, 26875.24, 9487.76, 4593.6], [43.825, 41.404, 40.037, 38.615]),
        ([99896.96, 33952.04, 9787.8, 4469.0], [44.731, 41.875, 40.121, 38.651]),
        {
            "pchip": (-4.47218200276197, 0.08887484704747745),
            "cubic": (-4.699437548106711, 0.09540440289107423),
        },
    ),
    (
        ([82472.76, 26875.24, 9487.76, 4593.6, 3600, 2900], [43.825, 41.404, 40.037, 38.615, 36.5, 35.1]),
        ([99896.96, 33952.04, 9787.8, 4469.0, 4040, 3300], [44.731, 41.875, 40.121, 38.651, 37, 36.5]),
        {
            "pchip": (-2.9528024116427964, 0.08953590194998828),
            "cubic": (-0.6392886207586934, 0.10358085155048348),
        },
    ),
]


@pytest.mark.parametrize(("reference", "test", "expected"), BJONTEGAARD_CASES)
@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_matches_published_reference_computation(reference, test, expected, method):
    rate, psnr = expected[method]
    assert bd_rate(test[0], test[1], reference[0], reference[1], method=method) == pytest.approx(rate, abs=1e-9)
    assert bd_psnr(test[0], test[1], reference[0], reference[1], method=method) == pytest.approx(psnr, abs=1e-9)


def _smooth_curve() -> tuple[np.ndarray, np.ndarray]:
    rates = np.array([0.05, 0.08, 0.12, 0.2, 0.3, 0.45])
    return rates, 30.0 + 4.0 * np.log2(rates) - 0.15 * np.log2(rates) ** 2


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_known_answers(method):
    rates, quality = _smooth_curve()
    assert bd_rate(0.8 * rates, quality, rates, quality, method=method) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(rates, quality, rates, quality, method=method) == pytest.approx(0.0, abs=1e-12)
    # log10(rate) linear in quality with slope 0.1: one quality unit better = 10**-0.1 of the rate.
    q = np.arange(20.0, 36.0, 3.0)
    r = 10 ** (0.1 * q - 3.0)
    expected = (10**-0.1 - 1) * 100
    assert bd_rate(r, q + 1.0, r, q, method=method) == pytest.approx(expected, abs=1e-9)
    assert bd_quality(r, q + 0.5, r, q, method=method) == pytest.approx(0.5, abs=1e-9)
    # Narrowed to a rate range: a curve better at low rates only is better there and worse above.
    lifted = q + np.where(r < r[2], 1.0, -1.0)
    low = bd_quality(r, lifted, r, q, method=method, rate_range=(r[0], r[1]))
    high = bd_quality(r, lifted, r, q, method=method, rate_range=(r[3], r[-1]))
    assert low > 0.5 and high < -0.5 and bd_quality(r, lifted, r, q, method=method) < low
    with pytest.raises(BDRateError, match="no rate within"):
        bd_quality(r, q, r, q, method=method, rate_range=(10 * r[-1], 20 * r[-1]))


def test_bd_rate_pchip_and_cubic_agree_on_smooth_curves():
    rates, quality = _smooth_curve()
    other = 31.0 + 3.8 * np.log2(rates) - 0.15 * np.log2(rates) ** 2
    pchip, cubic = (
        bd_rate(rates, other, rates, quality),
        bd_rate(rates, other, rates, quality, method="cubic"),
    )
    assert pchip == pytest.approx(-20.3, abs=0.1)
    assert abs(pchip - cubic) < 1.0


def test_bd_rate_drops_non_monotone_points_with_a_note():
    rates, quality = _smooth_curve()
    noisy_r = np.append(rates, 0.25)[::-1]  # unsorted, and 0.25 bpp gets lower quality than 0.2 bpp
    noisy_q = np.append(quality, quality[3] - 0.5)[::-1]
    notes: list[str] = []
    value = bd_rate(noisy_r, noisy_q, rates / 0.9, quality, notes=notes)
    assert value == pytest.approx(bd_rate(rates, quality, rates / 0.9, quality), abs=1e-12)
    assert len(notes) == 1 and "dropped 1" in notes[0] and "0.25" in notes[0]
    r, q = monotone_curve([3, 1, 2, 2, 4], [5, 1, 3, 4, math.inf])  # equal rates: the better point stays
    assert r.tolist() == [1, 2, 3] and q.tolist() == [1, 4, 5]


def test_bd_rate_errors():
    rates, quality = _smooth_curve()
    with pytest.raises(BDRateError, match="share no quality range") as info:
        bd_rate(rates, quality + 100, rates, quality)
    assert isinstance(info.value, DataError)
    with pytest.raises(BDRateError, match="needs 4"):
        bd_rate(rates[:3], quality[:3], rates, quality, method="cubic")
    assert abs(bd_rate(rates[:3], quality[:3], rates, quality)) < 0.1  # PCHIP works from 2 points
    with pytest.raises(DataError, match="positive"):
        bd_rate([0.0, 0.1], [20, 21], rates, quality)
    with pytest.raises(DataError, match="unknown BD interpolation"):
        bd_rate(rates, quality, rates, quality, method="akima")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- records


def synthetic_records() -> list[Record]:
    """Two images, a reference 'ref' and a method 'ours' that needs exactly 0.8x its bytes."""
    records = []
    rates, quality = _smooth_curve()
    ms = 1.0 - 10 ** (-(quality - 15.0) / 10.0)  # MS-SSIM whose dB value follows the same curve
    for method, scale in (("ref", 1.0), ("ours", 0.8)):
        for i, (r, q, m) in enumerate(zip(rates, quality, ms, strict=True)):
            for image in ("a", "b"):
                payload = r * scale * 128 * 256 / 8
                records.append(
                    Record(
                        method=method,
                        quality=f"q{i}",
                        image=image,
                        payload_bytes=round(payload),
                        wire_bytes=round(payload) + 20,
                        payload_bpp=r * scale,
                        wire_bpp=(round(payload) + 20) * 8 / (128 * 256),
                        estimated_bpp=None if method == "ref" else r * scale * 0.97,
                        psnr=q,
                        ms_ssim=m,
                    )
                )
    return records


def test_aggregate_and_bd_rate_table():
    records = synthetic_records()
    curves = aggregate(records)
    assert sorted(curves) == ["ours", "ref"]
    assert [p.n_images for p in curves["ours"]] == [2] * 6
    assert curves["ref"][0].estimated_bpp is None
    assert curves["ours"][0].estimated_bpp == pytest.approx(0.05 * 0.8 * 0.97)
    table = bd_rate_table(records, ["ref"])
    assert list(table) == ["ours vs ref"]
    assert table["ours vs ref"]["psnr"] == pytest.approx(-20.0, abs=1e-9)
    assert table["ours vs ref"]["ms_ssim"] == pytest.approx(-20.0, abs=1e-6)
    with pytest.raises(ConfigError, match="methods present"):
        bd_rate_table(records, ["hevc"])
    with pytest.raises(DataError, match="duplicate"):
        aggregate([*records, records[0]])


def test_bd_rate_table_records_why_a_pair_has_no_value():
    far = [
        Record("far", f"q{i}", "a", 100, 120, 0.1 * (i + 1), 0.12 * (i + 1), None, 60.0 + i, 0.999) for i in range(3)
    ]
    notes: list[str] = []
    table = bd_rate_table(synthetic_records() + far, ["ref"], notes=notes)
    assert table["far vs ref"]["psnr"] is None
    assert any(n.startswith("far vs ref (psnr): no BD-rate") for n in notes)
    assert any("far (ms_ssim): dropped" in n for n in notes)  # equal MS-SSIM at higher rates


def test_write_results_schema(tmp_path):
    records = synthetic_records()
    records[0] = dataclasses.replace(records[0], psnr=math.inf)  # a lossless decode
    path = write_results(tmp_path / "run", records, bd_rate_table(records, ["ref"]), {"dataset": "synthetic"})
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert path.name == "results.json"
    assert set(doc) == {"bd_rate", "curves", "records", "meta"}
    assert set(doc["bd_rate"]) == {"ours vs ref"}
    assert set(doc["bd_rate"]["ours vs ref"]) == {"psnr", "ms_ssim"}
    assert doc["records"][0]["psnr"] is None
    assert len(doc["records"]) == 24 and set(doc["curves"]) == {"ours", "ref"}
    assert {"method", "quality", "payload_bpp", "wire_bpp", "estimated_bpp", "psnr", "ms_ssim_db"} <= set(
        doc["curves"]["ours"][0]
    )
    assert doc["meta"]["dataset"] == "synthetic" and doc["meta"]["versions"]["numpy"] == np.__version__


def test_run_anchors_records(image):
    anchors = available_anchors(["jpeg"])
    if not anchors:
        pytest.skip("JPEG anchor not available here")
    jpeg = dataclasses.replace(anchors[0], qualities=(10, 50))
    records = run_anchors([("img0", image), ("img1", image[:, ::-1].copy())], [jpeg], progress=False)
    assert [(r.quality, r.image) for r in records] == [
        ("10", "img0"),
        ("10", "img1"),
        ("50", "img0"),
        ("50", "img1"),
    ]
    for r in records:
        assert r.method == "jpeg" and r.estimated_bpp is None
        assert 0 < r.payload_bytes < r.wire_bytes
        assert r.payload_bpp == pytest.approx(metrics.bpp(r.payload_bytes, 128, 256))
        assert 0.5 < r.ms_ssim < 1.0 and r.psnr > 20


def test_plot_writes_pngs(tmp_path):
    from PIL import Image

    paths = plot_rd_curves(aggregate(synthetic_records()), tmp_path, anchors=["ref"], max_bpp=0.5)
    assert [p.name for p in paths] == ["rd_psnr.png", "rd_ms_ssim.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
            assert im.size[0] > 300


# ----------------------------------------------------------------------------------------------- preprocess


@pytest.mark.parametrize(
    ("shape", "window"),
    [
        ((375, 1242, 3), (slice(2, 372), slice(251, 991))),  # KITTI: centre 370x740, torchvision rounding
        ((370, 1226, 3), (slice(0, 370), slice(243, 983))),
        ((480, 640, 3), (slice(80, 400), slice(0, 640))),  # 1:2 centre crop
        ((300, 1000, 3), (slice(0, 300), slice(200, 800))),
    ],
)
def test_paper_protocol_crops_the_centre(shape, window):
    frame = np.zeros(shape, np.uint8)
    frame[window] = 200  # any pixel outside the expected crop would pull the area average down
    out = preprocess.paper_protocol(frame)
    assert out.shape == (128, 256, 3) and out.dtype == np.uint8
    assert np.all(out == 200)


def test_paper_protocol_other_sizes():
    assert preprocess.paper_protocol(np.zeros((600, 200, 3), np.uint8)).shape == (128, 256, 3)
    assert preprocess.paper_protocol(np.zeros((128, 256), np.uint8)).shape == (128, 256)
    with pytest.raises(DataError):
        preprocess.paper_protocol(np.zeros((0, 5, 3), np.uint8))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), m=st.integers(1, 20), channels=st.sampled_from([0, 1, 3]))
def test_pad_to_the_stride_and_crop_round_trip(h, w, m, channels):
    shape = (h, w) if channels == 0 else (h, w, channels)
    img = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    padded, size = geometry.pad(img, m), (h, w)
    assert padded.shape[0] % m == 0 and padded.shape[1] % m == 0 and padded.shape[2:] == img.shape[2:]
    assert padded.shape[0] - h < m and padded.shape[1] - w < m
    np.testing.assert_array_equal(geometry.crop(padded, size), img)
    np.testing.assert_array_equal(padded[h:, :w], np.broadcast_to(img[h - 1 : h], padded[h:, :w].shape))
    np.testing.assert_array_equal(padded[:, w:], np.broadcast_to(padded[:, w - 1 : w], padded[:, w:].shape))


def test_pad_and_crop_errors():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ConfigError):
        geometry.pad(img, 0)
    with pytest.raises(DataError):
        geometry.crop(img, (11, 10))
    assert geometry.pad(img, 5) is img


def test_unavailable_anchor_is_skipped_with_a_logged_reason(monkeypatch, caplog):
    from stereodsc.eval import anchors

    monkeypatch.setattr(anchors, "_unavailable_reason", lambda name: "no encoder" if name == "avif" else None)
    with caplog.at_level("WARNING", logger="stereodsc.eval.anchors"):
        names = [a.name for a in anchors.available_anchors(["jpeg", "avif"])]
    assert names == ["jpeg"]
    assert "skipping anchor 'avif': no encoder" in caplog.text
