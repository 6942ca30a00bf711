"""DSIN: decode x, find matching patches in the side image, refine (Ayzik & Avidan, ECCV 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from stereodsc.errors import ConfigError
from stereodsc.models.balle import EDGE_CHANNELS, BalleModel
from stereodsc.models.base import Distortion, bpp, check_choice
from stereodsc.models.refine_net import RefineNet, normalize

# Windows whose summed squared deviation is below this (per value) count as flat, not as
# perfectly correlated: it keeps float32 cancellation in the variance from producing huge scores.
_FLAT = 1e-4


def _colour_transform(t: Tensor) -> Tensor:
    """H1 = R + G, H2 = R - G, H3 = 0.5 (R + B), as the reference code (its docstring says -0.5)."""
    r, g, b = t.unbind(1)
    return torch.stack([r + g, r - g, 0.5 * (r + b)], dim=1)


def _gaussian_prior(n: int, size: int, positions: int, fwhm: float, device: torch.device) -> Tensor:
    """[n, positions]: weight of window start i for the n-th patch (start n * size), FWHM given."""
    d = torch.arange(positions, device=device)[None, :] - size * torch.arange(n, device=device)[:, None]
    return torch.exp(-4 * math.log(2) * d.double() ** 2 / fwhm**2).float()


@torch.no_grad()
def si_finder(
    x_dec: Tensor,
    side_dec: Tensor,
    side: Tensor,
    patch: Sequence[int] = (20, 24),
    gaussian_prior: bool = True,
    max_row_offset: int | None = None,
) -> Tensor:
    """DSIN's exhaustive SI-Finder: side_syn holds, for each non-overlapping patch of x_dec, the
    patch of the side image at the position where side_dec correlates best (Pearson,
    colour-transformed standardised values; notes §1.3). The reference search, kept for the paper
    comparison; ``band_si_finder`` is the deployed one.

    Images are [B, 3, H, W] in [0, 1]. They are padded (replicate) to a multiple of the patch and
    side_syn cropped back. ``gaussian_prior`` weights each score by a 2-D Gaussian of the offset from
    the patch's own position (FWHM = half the image size). ``max_row_offset`` searches only window
    rows within that many rows of the patch's own (rectified pairs), which also skips the work.
    Scores: one grouped conv2d per row of patches (patches as filters), so memory holds one row's
    scores; cost ~P * (searched rows) * W * 1440 MACs: ~3 GMAC at 128x256 and ~600 GMAC at
    KITTI's full size for the exhaustive search, ~(2 k + 1) / H of that with max_row_offset = k.
    """
    b, _, h, w = x_dec.shape
    ph, pw = patch
    pad = (0, (-w) % pw, 0, (-h) % ph)
    x_dec, side_dec, side = (F.pad(t, pad, mode="replicate") for t in (x_dec, side_dec, side))
    hp, wp = x_dec.shape[-2:]
    nh, nw = hp // ph, wp // pw
    rows, cols = hp - ph + 1, wp - pw + 1  # window start positions
    n = 3 * ph * pw

    xs = _colour_transform(normalize(x_dec))
    ys = _colour_transform(normalize(side_dec))
    patches = xs.reshape(b, 3, nh, ph, nw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, nh, nw, n)
    patches = patches - patches.mean(dim=-1, keepdim=True)
    patches = (patches / patches.norm(dim=-1, keepdim=True).clamp_min(1e-6)).reshape(b, nh, nw * 3, ph, pw)
    # Pearson = <centred unit patch, window> / ||window - mean(window)||; window sums by box filter.
    s1 = F.avg_pool2d(ys.sum(1, keepdim=True), (ph, pw), stride=1) * (ph * pw)
    s2 = F.avg_pool2d((ys * ys).sum(1, keepdim=True), (ph, pw), stride=1) * (ph * pw)
    spread = (s2 - s1 * s1 / n).clamp_min(n * _FLAT).sqrt()  # [B, 1, rows, cols]
    prior_r = _gaussian_prior(nh, ph, rows, 0.5 * hp, ys.device)
    prior_c = _gaussian_prior(nw, pw, cols, 0.5 * wp, ys.device)

    best_r, best_c = [], []
    for i in range(nh):
        lo, hi = 0, rows  # searched window start rows [lo, hi)
        if max_row_offset is not None:
            lo, hi = max(0, i * ph - max_row_offset), min(rows, i * ph + max_row_offset + 1)
        band = ys[:, :, lo : hi - 1 + ph].reshape(1, b * 3, hi - 1 + ph - lo, wp)
        score = F.conv2d(band, patches[:, i].reshape(b * nw, 3, ph, pw), groups=b).reshape(b, nw, hi - lo, cols)
        score.div_(spread[:, :, lo:hi])
        if gaussian_prior:
            score.mul_(prior_r[i, lo:hi].view(1, 1, -1, 1)).mul_(prior_c.view(1, nw, 1, cols))
        best = score.reshape(b, nw, -1).argmax(dim=-1)  # [B, nw]
        best_r.append(lo + best // cols)
        best_c.append(best % cols)
    r0, c0 = torch.stack(best_r, dim=1), torch.stack(best_c, dim=1)  # [B, nh, nw]
    # Gather each chosen ph x pw window of the original side image, tiled back in x's patch order.
    dr = torch.arange(ph, device=side.device).view(1, 1, ph, 1)
    dc = torch.arange(pw, device=side.device).view(1, 1, 1, pw)
    index = (r0.view(b, -1, 1, 1) + dr) * wp + (c0.view(b, -1, 1, 1) + dc)  # [B, P, ph, pw]
    picked = side.reshape(b, 3, hp * wp).gather(2, index.reshape(b, 1, -1).expand(b, 3, -1))
    side_syn = picked.reshape(b, 3, nh, nw, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, hp, wp)
    return side_syn[..., :h, :w]


def band_offsets(max_rows: int, max_cols: int) -> list[tuple[int, int]]:
    """Every (row, column) offset of the band, nearest first: argmax keeps the first of equal scores,
    so a flat or ambiguous patch takes the smallest displacement."""
    offsets = [(r, c) for r in range(-max_rows, max_rows + 1) for c in range(-max_cols, max_cols + 1)]
    return sorted(offsets, key=lambda o: (abs(o[1]), abs(o[0]), o))


def _column_windows(t: Tensor, nw: int, qw: int, blocks: int, start: int, span: int) -> Tensor:
    """[..., (nw + 2 blocks) qw] -> [..., nw, span]: for patch column j, the columns
    j qw + start .. j qw + start + span of ``t``, built from ``2 blocks + 1`` shifted blocks of qw columns
    (no gather: only the block count depends on the image size, so the ONNX graph stays dynamic)."""
    lead = t.shape[:-1]
    t = t.reshape(*lead, nw + 2 * blocks, qw)
    t = torch.cat([t[..., k : k + nw, :] for k in range(2 * blocks + 1)], dim=-1)
    return t[..., start : start + span]


def band_si_finder(
    x_dec: Tensor,
    side_dec: Tensor,
    side: Tensor,
    patch: Sequence[int] = (16, 32),
    max_disparity: int = 96,
    max_row_offset: int = 2,
    match_scale: int = 2,
) -> Tensor:
    """DSIN's SI-Finder on a rectified pair: each patch of x_dec searches only its epipolar band.

    For each non-overlapping ph x pw patch of x_dec, the window of side_dec whose Pearson
    correlation with it is highest (= OpenCV's TM_CCOEFF_NORMED on DSIN's colour-transformed
    standardised values) among the windows displaced by -max_row_offset..max_row_offset rows and
    -max_disparity..max_disparity columns; side_syn gets the side image's pixels of that window
    (rows/columns beyond the image repeat its edge). Both signs of disparity are searched: either
    camera may be the reference, and training flips pairs. The match runs on images average-pooled
    by ``match_scale`` (offsets in steps of match_scale pixels), so the band holds
    (2R + 1)(2D + 1) offsets, R = ceil(r / s), D = ceil(D_max / s); equal scores go to the offset
    nearest to the patch's own position.

    Per patch, the scores of every column offset come from one small matrix product (patch
    columns x window columns, summed along the diagonals), so the search is a batched matmul of
    ~3 (2R + 1)(2D + 1) H W / s^2 multiply-adds: linear in the image size, and every loop has a
    fixed length, so the ONNX graph takes any H, W.
    """
    b, _, h, w = x_dec.shape
    ph, pw = patch
    s = match_scale
    if ph % s or pw % s:
        raise ConfigError(f"patch {ph}x{pw} must be a multiple of match_scale {s}")
    pad = (0, (-w) % pw, 0, (-h) % ph)
    x_dec, side_dec, side = (F.pad(t, pad, mode="replicate") for t in (x_dec, side_dec, side))
    hp, wp = x_dec.shape[-2:]
    nh, nw = hp // ph, wp // pw
    qh, qw = ph // s, pw // s  # patch at the matching scale
    rows, cols = math.ceil(max_row_offset / s), math.ceil(max_disparity / s)
    xs, ss = _colour_transform(normalize(x_dec)), _colour_transform(normalize(side_dec))
    if s > 1:
        xs, ss = F.avg_pool2d(xs, s), F.avg_pool2d(ss, s)
    n = 3 * qh * qw
    # Centred, unit-norm x patches: Pearson = <x patch, window> / ||window - mean(window)||.
    xv = xs.reshape(b, 3, nh, qh, nw, qw)
    xv = xv - xv.mean(dim=(1, 3, 5), keepdim=True)
    xv = xv / xv.square().sum(dim=(1, 3, 5), keepdim=True).sqrt().clamp_min(1e-6)
    patches = xv.permute(0, 2, 4, 1, 3, 5).reshape(b, nh, nw, 1, n // qw, qw)  # (colour, row) x column
    cb = math.ceil(cols / qw)  # column blocks of qw searched on each side
    span, first = qw + 2 * cols, cb * qw - cols  # window columns, and where they start in the blocks
    sp = F.pad(ss, (cb * qw, cb * qw, rows, rows), mode="replicate")
    # Window sums at every top-left position (separable box filters), for the windows' spread.
    sums = torch.cat([sp.sum(1, keepdim=True), sp.square().sum(1, keepdim=True)], dim=1)
    sums = F.avg_pool2d(F.avg_pool2d(sums, (qh, 1), stride=1), (1, qw), stride=1) * (qh * qw)
    sums = F.pad(sums, (0, qw - 1))  # width (nw + 2 cb) qw, like sp
    dots, spreads = [], []
    for k in range(2 * rows + 1):  # row offset k - rows
        band = sp[:, :, k : k + nh * qh].reshape(b, 3, nh, qh, -1)
        windows = _column_windows(band, nw, qw, cb, first, span)  # [B, 3, nh, qh, nw, span]
        windows = windows.permute(0, 2, 4, 1, 3, 5).reshape(b, nh, nw, n // qw, span)
        products = patches.transpose(-1, -2) @ windows.unsqueeze(3)  # [B, nh, nw, 1, qw, span]
        diagonals = products[..., 0, 0, : 2 * cols + 1]  # column offset dc sums products (j, j + dc)
        for j in range(1, qw):
            diagonals = diagonals + products[..., 0, j, j : j + 2 * cols + 1]
        dots.append(diagonals)
        box = _column_windows(sums[:, :, k : k + nh * qh : qh], nw, qw, cb, first, 2 * cols + 1)
        spreads.append((box[:, 1] - box[:, 0] * box[:, 0] / n).clamp_min(n * _FLAT).sqrt())  # [B, nh, nw, 2D+1]
    offsets = band_offsets(rows, cols)
    order = torch.tensor([(dr + rows) * (2 * cols + 1) + dc + cols for dr, dc in offsets], device=side.device)
    scores = (torch.stack(dots, dim=3) / torch.stack(spreads, dim=3)).reshape(b, nh, nw, -1).index_select(3, order)
    best = scores.argmax(dim=3)  # [B, nh, nw] index into offsets
    table = torch.tensor(offsets, device=side.device) * s
    dr_best, dc_best = table[best, 0], table[best, 1]
    # Gather each chosen window of the side image (clamped at the border) in x's patch order.
    r = torch.arange(nh, device=side.device).view(1, nh, 1, 1, 1) * ph + torch.arange(ph, device=side.device).view(
        1, 1, 1, ph, 1
    )
    c = torch.arange(nw, device=side.device).view(1, 1, nw, 1, 1) * pw + torch.arange(pw, device=side.device).view(
        1, 1, 1, 1, pw
    )
    r = (r + dr_best.view(b, nh, nw, 1, 1)).clamp(0, hp - 1)
    c = (c + dc_best.view(b, nh, nw, 1, 1)).clamp(0, wp - 1)
    index = (r * wp + c).reshape(b, 1, -1).expand(b, 3, -1)
    picked = side.reshape(b, 3, hp * wp).gather(2, index)
    side_syn = picked.reshape(b, 3, nh, nw, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, 3, hp, wp)
    return side_syn[..., :h, :w]


SEARCHES = ("exhaustive", "band")


class DSIN(BalleModel):
    """DSIN on a Ballé backbone: decode x, find matching side-image patches, refine.

    Data flow (``backbone`` picks the prior of y, as the Ballé models)::

        x ──g_a──> y ──Q──> y_hat ──g_s (, post_net)──> x_dec ────┐
        side ──(decode(Q(g_a(side))) if reencode_side)──> side_dec│
        (x_dec, side_dec, side) ──SI-Finder──> side_syn ──────SI-Net──> x_hat

        likelihoods = {"y": p(y_hat) (, "z": p(z_hat))}

    side_syn is made of side-image pixels: per patch of x_dec, the side window whose decoded
    version (side_dec) correlates best with it. Loss: lmbda 255^2 [(1 - si_weight) D(x, x_dec) +
    si_weight D(x, x_hat)] + R, si_weight = 0.7.

    ``search``: "exhaustive" (the reference: every window of the image, with its Gaussian prior;
    ~600 GMAC at KITTI's native size, so the host graph is exported per size) or "band"
    (``band_si_finder``: rows +-max_row_offset, columns +-max_disparity, at 1/match_scale; linear
    in the image, one graph for every size). ``reencode_side=False`` matches x_dec against the side
    image itself: the right choice when the host's side image is already a decoded frame (it has
    the codec's artefacts), and it saves a second full decode on the host.

    Deviations from the paper / reference (ayziksha/DSIN):
    - Backbone: Ballé 2017 / 2018 (4-stage transforms, factorized or hyperprior) instead of
      Mentzer et al.'s CVPR 2018 codec (importance map, 6 learned centres, 3-D context model), so
      that all our models share one backbone and one entropy coder.
    - Rate control: the reference's beta * max(H - H_target, 0) hinge is replaced by the
      lambda-weighted rate used by every model here; equivalent to beta = 1 / (lmbda 255^2) on
      the rate with H_target = 0. The distortion is the trainer's (MSE or 1 - MS-SSIM), not MAE.
    - Matched windows are cut from the side image with integer offsets (the reference's
      crop_and_resize with normalised boxes resamples them slightly); images are padded
      (replicate) to a multiple of the patch; near-flat windows get a floored variance.
    """

    name = "dsin"
    prior_name = "balle2017"
    uses_side_info = True
    host_only_options = BalleModel.host_only_options | {"si_width", "si_residual"}
    loss_only_options = frozenset({"si_weight"})
    fresh_modules: ClassVar[dict[str, str]] = {
        **BalleModel.fresh_modules,
        "si_width": "si_net.",
        "si_residual": "si_net.",
    }

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        backbone: str = "balle2017",
        encoder: str = "full",
        edge_channels: Sequence[int] = EDGE_CHANNELS,
        hyper_channels: int | None = None,
        post_width: int = 0,
        patch: Sequence[int] = (20, 24),
        search: str = "exhaustive",
        gaussian_prior: bool = True,
        max_row_offset: int | None = None,
        max_disparity: int = 96,
        match_scale: int = 2,
        reencode_side: bool = True,
        si_width: int = 32,
        si_residual: bool = False,
        si_weight: float = 0.7,
    ) -> None:
        check_choice(self.name, "search", search, SEARCHES)
        patch = [int(p) for p in patch]
        if len(patch) != 2 or min(patch) < 1:
            raise ConfigError(f"{self.name}: patch={patch} must be [height, width] of positive integers")
        if max_row_offset is not None and max_row_offset < 0:
            raise ConfigError(f"{self.name}: max_row_offset={max_row_offset} must be >= 0 or None (no band)")
        if search == "band":
            if max_row_offset is None:
                raise ConfigError(f"{self.name}: search='band' needs max_row_offset (rows searched above and below)")
            if max_disparity < 0 or match_scale < 1 or patch[0] % match_scale or patch[1] % match_scale:
                raise ConfigError(
                    f"{self.name}: search='band' needs max_disparity >= 0 and a patch {patch} that is a multiple "
                    f"of match_scale={match_scale} >= 1"
                )
        super().__init__(
            N,
            M,
            encoder,
            edge_channels,
            hyper_channels,
            post_width,
            backbone=backbone,
            patch=patch,
            search=search,
            gaussian_prior=gaussian_prior,
            max_row_offset=max_row_offset,
            max_disparity=max_disparity,
            match_scale=match_scale,
            reencode_side=reencode_side,
            si_width=si_width,
            si_residual=si_residual,
            si_weight=si_weight,
        )
        self.patch = (patch[0], patch[1])
        self.search = search
        self.gaussian_prior = bool(gaussian_prior)
        self.max_row_offset = max_row_offset
        self.max_disparity = int(max_disparity)
        self.match_scale = int(match_scale)
        self.reencode_side = bool(reencode_side)
        self.si_weight = float(si_weight)
        self.si_net = RefineNet(si_width, si_residual)

    def find(self, x_dec: Tensor, side_dec: Tensor, side: Tensor) -> Tensor:
        """side_syn by the configured SI-Finder search."""
        if self.search == "band":
            assert self.max_row_offset is not None
            return band_si_finder(
                x_dec, side_dec, side, self.patch, self.max_disparity, self.max_row_offset, self.match_scale
            )
        return si_finder(x_dec, side_dec, side, self.patch, self.gaussian_prior, self.max_row_offset)

    def refine(self, x_dec: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
        """(x_hat, side_syn) from the decoded x and the side image. x_dec is taken in the image range,
        as a host whose host side is split passes it from one graph to the next (in 8 bits)."""
        x_dec = x_dec.clamp(0, 1)
        with torch.no_grad():
            side_dec = self.decode(torch.round(self.g_a(side))) if self.reencode_side else side
            side_syn = self.find(x_dec, side_dec.clamp(0, 1), side)
        return self.si_net(x_dec, side_syn), side_syn

    def forward(self, x: Tensor, side: Tensor | None = None) -> dict[str, Any]:
        self.check_inputs(x, side)
        assert side is not None
        x_dec, likelihoods = self.code(x)
        x_hat, side_syn = self.refine(x_dec, side)
        return {"x_hat": x_hat, "likelihoods": likelihoods, "x_dec": x_dec, "side_syn": side_syn}

    def loss(
        self, out: dict[str, Any], x: Tensor, side: Tensor | None, lmbda: float, distortion: Distortion
    ) -> dict[str, Tensor]:
        rate = bpp(out["likelihoods"].values(), x)
        d_hat, d_dec = distortion(out["x_hat"], x), distortion(out["x_dec"], x)
        weighted = (1 - self.si_weight) * d_dec + self.si_weight * d_hat
        return {
            "loss": lmbda * 255**2 * weighted + rate,
            "bpp": rate,
            "distortion": d_hat,
            "distortion_dec": d_dec,
        }

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None = None) -> Tensor:
        x_hat, _ = self.refine(self.decode(latents["y"]), self.check_side(side))
        return x_hat.clamp(0, 1)

    def decode_without_side(self, y: Tensor) -> Tensor:
        """x_dec, the decode before the side image refines it: what a host shows of a frame whose side
        image is missing (with a frozen decoder, exactly the intra codec's decode)."""
        return self.decode(y).clamp(0, 1)
