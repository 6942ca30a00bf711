"""NDIC-CAM: NDIC whose x decoder attends to the y decoder's features (Mital et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stereodsc.errors import ConfigError
from stereodsc.models.base import check_choice
from stereodsc.models.layers import synthesis_transform
from stereodsc.models.ndic import NDIC

PATCH_MODES = ("grid", "fixed")
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
    """Cross-attention module (CAM, notes §3.2): queries from x features, keys/values from y's.

    Patch embeddings (separate for x and y) -> shared LayerNorm -> multi-head attention ->
    output projection + dropout -> unpack to a feature map of aligned y features, which is
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
        self.embed_y = nn.Linear(patch_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()
        self.unembed = nn.Linear(dim, patch_dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x_feat: Tensor, y_feat: Tensor) -> Tensor:
        b, c, h, w = x_feat.shape
        ph, pw = self.patch
        pad = (0, (-w) % pw, 0, (-h) % ph)
        hp, wp = h + pad[3], w + pad[1]
        q_tokens = self.norm(self.embed_x(pack(F.pad(x_feat, pad), ph, pw)))
        kv_tokens = self.norm(self.embed_y(pack(F.pad(y_feat, pad), ph, pw)))
        q = self._split_heads(self.to_q(q_tokens))
        k, v = (self._split_heads(t) for t in self.to_kv(kv_tokens).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], -1)
        aligned = unpack(self.unembed(self.to_out(attended)), c, hp, wp, ph, pw)[..., :h, :w]
        return torch.cat([x_feat, aligned], dim=1)


class NDICCAM(NDIC):
    """NDIC with cross-attention modules after x-decoder stages 1..num_cams (1/8, 1/4, 1/2 scale).

    Each CAM attends from the x decoder's features to the y decoder's features at the same scale
    (y decoder = NDIC's ``g_sy`` on concat(h_y, w)); its output is concatenated, so the next
    x-decoder stage takes 2N channels. Patches: C_p = 1, H_p x W_p = (image_size // scale) / 4.

    ``patch_mode``:
    - "grid" (reference): a fixed 4 x 4 grid at ``image_size``; the patch embeddings' sizes tie the
      weights to that resolution, so any other input size is refused.
    - "fixed" (default, deployment): the same patch size, the grid grows with the image (feature
      maps padded to a multiple of the patch), so the weights run at any multiple of ``stride``.
      Identical to "grid" at ``image_size``. Cost: tokens = N * (H'/H_p) * (W'/W_p) per CAM, i.e.
      they grow with the image area and attention is quadratic in them. With N = 192 at 128x256,
      3072 tokens per CAM; at KITTI's native size (padded to 384x1248), 46,080 per CAM, ~2.1e9
      attention scores per head per CAM: the CAMs then dominate the decoder's cost by far.

    Deviations from the reference (ipc-lab/NDIC-CAM): "fixed" patch mode; attention via
    ``scaled_dot_product_attention`` with dropout only after the output projection (as the notes);
    q from a q-only projection (the reference computes and discards k, v for x).
    Defaults alpha = beta = 0 as the reference config and the paper's best "ATN" (alpha = 0:
    the y decoder learns only through the CAMs; NDIC itself defaults to 1, 1).
    """

    name = "ndic_cam"

    def __init__(
        self,
        N: int = 64,
        M: int = 96,
        backbone: str = "balle2017",
        alpha: float = 0.0,
        beta: float = 0.0,
        num_cams: int = 3,
        heads: int = 4,
        dim: int = 128,
        dim_head: int = 32,
        dropout: float = 0.1,
        patch_mode: str = "fixed",
        image_size: Sequence[int] = (128, 256),
    ) -> None:
        check_choice(self.name, "num_cams", num_cams, range(len(CAM_SCALES) + 1))
        check_choice(self.name, "patch_mode", patch_mode, PATCH_MODES)
        image_size = [int(s) for s in image_size]
        unit = CAM_SCALES[0] * GRID
        if len(image_size) != 2 or image_size[0] % unit or image_size[1] % unit:
            raise ConfigError(f"{self.name}: image_size={image_size} must be [height, width], both multiples of {unit}")
        super().__init__(
            N,
            M,
            backbone,
            alpha,
            beta,
            num_cams=num_cams,
            heads=heads,
            dim=dim,
            dim_head=dim_head,
            dropout=dropout,
            patch_mode=patch_mode,
            image_size=image_size,
        )
        self.patch_mode = patch_mode
        self.image_size = tuple(image_size)
        self.cams = nn.ModuleList(
            CrossAttention(self.cam_patch(scale), dim, heads, dim_head, dropout) for scale in CAM_SCALES[:num_cams]
        )

    def cam_patch(self, scale: int) -> tuple[int, int]:
        """Patch (H_p, W_p) of the CAM at feature scale 1/scale."""
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
                "build the model with patch_mode='fixed' (same weights, the patch grid grows with the image)"
            )

    def check_image(self, x: Tensor) -> None:
        super().check_image(x)
        self.check_resolution(x.shape[-2], x.shape[-1])

    def decode_x(self, x_latent: Tensor, w: Tensor, y_feats: Sequence[Tensor]) -> Tensor:
        t = torch.cat([x_latent, w], 1)
        for i, stage in enumerate(self.g_s):
            t = stage(t)
            if i < len(self.cams):
                t = self.cams[i](t, y_feats[i])
        return t

    def synthesis(self, latents: dict[str, Tensor], side: Tensor | None) -> Tensor:
        self.check_resolution(*(16 * s for s in latents["y"].shape[-2:]))
        return super().synthesis(latents, side)
