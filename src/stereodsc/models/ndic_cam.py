"""NDIC-CAM: NDIC whose x decoder attends to the side decoder's features (Mital et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stereodsc.errors import ConfigError
from stereodsc.models.balle import EDGE_CHANNELS
from stereodsc.models.base import check_choice
from stereodsc.models.layers import synthesis_transform
from stereodsc.models.ndic import NDIC

PATCH_MODES = ("grid", "fixed", "rows")
CAM_SCALES = (8, 4, 2)  # feature-map downsampling after decoder stages 1, 2, 3
GRID = 4  # the reference cuts each feature map into a GRID x GRID grid at the training resolution


def pack(t: Tensor, ph: int, pw: int) -> Tensor:
    """[B, C, H, W] -> [B, C*(H/ph)*(W/pw), ph*pw]: one token per channel and ph x pw patch (C_p = 1)."""
    b, c, h, w = t.shape
    t = t.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 2, 4, 3, 5)
    return t.reshape(b, -1, ph * pw)


def unpack(tokens: Tensor, c: int, h: int, w: int, ph: int, pw: int) -> Tensor:
    """Inverse of ``pack``."""
    b = tokens.shape[0]
    t = tokens.reshape(b, c, h // ph, w // pw, ph, pw).permute(0, 1, 2, 4, 3, 5)
    return t.reshape(b, c, h, w)


class CrossAttention(nn.Module):
    """Cross-attention module (CAM, notes §3.2): queries from x features, keys/values from the side's.

    Patch embeddings (separate for x and side) -> shared LayerNorm -> multi-head attention ->
    output projection + dropout -> unpack to a feature map of aligned side features, which is
    concatenated to x's (no residual, as the reference). Feature maps that are not a multiple of
    the patch are zero-padded and the result cropped back.
    """

    def __init__(self, patch: tuple[int, int], dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.patch = patch
        self.heads = heads
        patch_dim = patch[0] * patch[1]
        inner = heads * dim_head
        self.embed_x = nn.Linear(patch_dim, dim)
        self.embed_side = nn.Linear(patch_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()
        self.unembed = nn.Linear(dim, patch_dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x_feat: Tensor, side_feat: Tensor) -> Tensor:
        b, c, h, w = x_feat.shape
        ph, pw = self.patch
        pad = (0, (-w) % pw, 0, (-h) % ph)
        hp, wp = h + pad[3], w + pad[1]
        q_tokens = self.norm(self.embed_x(pack(F.pad(x_feat, pad), ph, pw)))
        kv_tokens = self.norm(self.embed_side(pack(F.pad(side_feat, pad), ph, pw)))
        q = self._split_heads(self.to_q(q_tokens))
        k, v = (self._split_heads(t) for t in self.to_kv(kv_tokens).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], -1)
        aligned = unpack(self.unembed(self.to_out(attended)), c, hp, wp, ph, pw)[..., :h, :w]
        return torch.cat([x_feat, aligned], dim=1)


class BandAttention(nn.Module):
    """Cross-attention along the epipolar band of a rectified pair (patch_mode="rows").

    Every pixel of the x features is a query (its C channels embedded); it attends to the side
    features on its own row and ``rows`` rows above and below, within a column window covering
    +-``block`` columns (the disparity bound at this scale). Queries are grouped in blocks of
    ``block`` columns that share one key window (the block, one block left, one right: a "halo"),
    so the attention is batched matrix products over (batch x rows x blocks): cost and memory grow
    linearly with height and width, and no weight depends on the image size. A learned bias per
    head, query column in its block and key slot encodes the relative position (the disparity).
    Keys outside the image are masked. The output (aligned side features) is concatenated to x's.
    """

    def __init__(self, channels: int, block: int, rows: int, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.block, self.rows, self.heads = block, rows, heads
        inner = heads * dim_head
        self.embed_x = nn.Linear(channels, dim)
        self.embed_side = nn.Linear(channels, dim)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.unembed = nn.Linear(dim, channels)
        self.rel_bias = nn.Parameter(torch.zeros(heads, block, self.keys))

    @property
    def keys(self) -> int:
        """Key slots per query block: (2 rows + 1) x 3 blocks of columns."""
        return (2 * self.rows + 1) * 3 * self.block

    def forward(self, x_feat: Tensor, side_feat: Tensor) -> Tensor:
        b, _, h, w = x_feat.shape
        bw, m, heads = self.block, self.rows, self.heads
        pad_w = (-w) % bw
        wp = w + pad_w
        nb = wp // bw
        q = self.to_q(self.norm(self.embed_x(x_feat.permute(0, 2, 3, 1))))  # [B, H, W, inner]
        kv = self.to_kv(self.norm(self.embed_side(side_feat.permute(0, 2, 3, 1))))  # [B, H, W, 2 inner]
        inner = q.shape[-1]
        dim_head = inner // heads
        q = F.pad(q, (0, 0, 0, pad_w))
        kv = F.pad(kv, (0, 0, bw, bw + pad_w, m, m))
        valid = F.pad(x_feat.new_ones(1, h, w, 1), (0, 0, bw, bw + pad_w, m, m))
        windows, masks = [], []
        for dr in range(2 * m + 1):
            for j in range(3):
                windows.append(kv[:, dr : dr + h, j * bw : j * bw + wp].reshape(b, h, nb, bw, 2 * inner))
                masks.append(valid[:, dr : dr + h, j * bw : j * bw + wp].reshape(1, h, nb, bw))
        keys = torch.cat(windows, dim=3).reshape(b * h * nb, self.keys, 2, heads, dim_head)
        k, v = keys.permute(2, 0, 3, 1, 4).unbind(0)  # each [B H nb, heads, K, dim_head]
        mask = torch.cat(masks, dim=3).expand(b, h, nb, self.keys).reshape(b * h * nb, 1, 1, self.keys)
        bias = self.rel_bias.unsqueeze(0) + (mask - 1.0) * 1e4
        q = q.reshape(b * h * nb, bw, heads, dim_head).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B H nb, heads, bw, dim_head]
        attended = attended.transpose(1, 2).reshape(b, h, wp, inner)[:, :, :w]
        aligned = self.unembed(self.to_out(attended)).permute(0, 3, 1, 2)
        return torch.cat([x_feat, aligned], dim=1)


class NDICCAM(NDIC):
    """NDIC with cross-attention modules after x-decoder stages 1..num_cams (1/8, 1/4, 1/2 scale).

    Data flow (NDIC's, plus the CAMs between decoder stages)::

        x ──g_a──> y ──Q──> y_hat ─┐
        side ──f──> w ─────────────cat─> g_s[0] ─CAM─> g_s[1] ─CAM─> g_s[2] ─CAM─> g_s[3] ──> x_hat
                                   │               ^              ^              ^
        side ─g_a_side─> h_side ──cat─> g_s_side[0] ──> g_s_side[1] ──> g_s_side[2]   (side features)

    Each CAM attends from the x decoder's features to the side decoder's features at the same
    scale (side decoder = NDIC's ``g_s_side`` on concat(h_side, w)); its output is concatenated, so
    the next x-decoder stage takes 2N channels.

    ``patch_mode``:
    - "grid" (reference): tokens are one channel of an H_p x W_p patch (C_p = 1), H_p x W_p =
      (image_size // scale) / 4, a fixed 4 x 4 grid at ``image_size``; the patch embeddings' sizes
      tie the weights to that resolution, so any other input size is refused.
    - "fixed": the same patch size, the grid grows with the image (feature maps padded to a
      multiple of the patch), so the weights run at any multiple of ``stride``. Identical to "grid"
      at ``image_size``. Cost: tokens = N * (H'/H_p) * (W'/W_p) per CAM grow with the image area and
      attention is quadratic in them: at KITTI's native size (384x1248) with N = 192, 46,080 tokens
      per CAM, ~2.1e9 attention scores per head per CAM.
    - "rows" (deployment on rectified pairs, DESIGN decision 8): ``BandAttention``: each feature
      pixel attends to the side features on its own row +-``attention_rows`` rows, within
      +-``max_disparity`` image columns (``ceil(max_disparity / scale)`` at scale 1/scale). Cost
      linear in the image size, the same weights at every size: per query (2 r + 1) * 3 *
      ceil(D / scale) keys, e.g. 216 at 1/4 scale with D = 96, r = 1.

    Deviations from the reference (ipc-lab/NDIC-CAM): "fixed" and "rows" patch modes; attention via
    ``scaled_dot_product_attention`` with dropout only after the output projection (as the notes);
    q from a q-only projection (the reference computes and discards k, v for x).
    Defaults alpha = beta = 0 as the reference config and the paper's best "ATN" (alpha = 0:
    the side decoder learns only through the CAMs; NDIC itself defaults to 1, 1).
    """

    name = "ndic_cam"

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        backbone: str = "balle2017",
        encoder: str = "full",
        edge_channels: Sequence[int] = EDGE_CHANNELS,
        hyper_channels: int | None = None,
        alpha: float = 0.0,
        beta: float = 0.0,
        num_cams: int = 3,
        heads: int = 4,
        dim: int = 128,
        dim_head: int = 32,
        dropout: float = 0.1,
        patch_mode: str = "fixed",
        image_size: Sequence[int] = (128, 256),
        max_disparity: int = 96,
        attention_rows: int = 1,
    ) -> None:
        check_choice(self.name, "num_cams", num_cams, range(len(CAM_SCALES) + 1))
        check_choice(self.name, "patch_mode", patch_mode, PATCH_MODES)
        image_size = [int(s) for s in image_size]
        unit = CAM_SCALES[0] * GRID
        if len(image_size) != 2 or image_size[0] % unit or image_size[1] % unit:
            raise ConfigError(f"{self.name}: image_size={image_size} must be [height, width], both multiples of {unit}")
        if max_disparity < 1 or attention_rows < 0:
            raise ConfigError(
                f"{self.name}: max_disparity={max_disparity} must be >= 1 and attention_rows={attention_rows} >= 0 "
                "(set max_disparity to the rig's largest disparity in pixels)"
            )
        super().__init__(
            N,
            M,
            backbone,
            encoder,
            edge_channels,
            hyper_channels,
            alpha,
            beta,
            num_cams=num_cams,
            heads=heads,
            dim=dim,
            dim_head=dim_head,
            dropout=dropout,
            patch_mode=patch_mode,
            image_size=image_size,
            max_disparity=max_disparity,
            attention_rows=attention_rows,
        )
        self.patch_mode = patch_mode
        self.image_size = tuple(image_size)
        self.max_disparity = int(max_disparity)
        cams: list[nn.Module] = []
        for scale in CAM_SCALES[:num_cams]:
            if patch_mode == "rows":
                block = math.ceil(max_disparity / scale)
                cams.append(BandAttention(N, block, attention_rows, dim, heads, dim_head, dropout))
            else:
                cams.append(CrossAttention(self.cam_patch(scale), dim, heads, dim_head, dropout))
        self.cams = nn.ModuleList(cams)

    def cam_patch(self, scale: int) -> tuple[int, int]:
        """Patch (H_p, W_p) of the CAM at feature scale 1/scale ("grid" and "fixed" modes)."""
        return self.image_size[0] // (scale * GRID), self.image_size[1] // (scale * GRID)

    def build_x_decoder(self, N: int, M: int) -> nn.Sequential:
        num_cams = self._options["num_cams"]
        return synthesis_transform((2 * M, *(2 * N if i < num_cams else N for i in range(3))), N)

    @property
    def side_depth(self) -> int:
        return len(self.cams)

    def check_resolution(self, h: int, w: int) -> None:
        if self.patch_mode == "grid" and (h, w) != self.image_size:
            raise ConfigError(
                f"{self.name} with patch_mode='grid' runs only at its training image_size "
                f"{self.image_size[0]}x{self.image_size[1]}, got {h}x{w}: resize the input to that size, or "
                "build the model with patch_mode='fixed' or 'rows' (the same weights at every size)"
            )

    def check_image(self, x: Tensor) -> None:
        super().check_image(x)
        self.check_resolution(x.shape[-2], x.shape[-1])

    def decode_x(self, y_hat: Tensor, w: Tensor, side_feats: Sequence[Tensor]) -> Tensor:
        t = torch.cat([y_hat, w], 1)
        for i, stage in enumerate(self.g_s):
            t = stage(t)
            if i < len(self.cams):
                t = self.cams[i](t, side_feats[i])
        return t

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None) -> Tensor:
        self.check_resolution(*(16 * s for s in latents["y"].shape[-2:]))
        return super().synthesis(latents, side)
