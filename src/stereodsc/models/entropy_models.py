"""Entropy models: factorized density (Ballé 2017) and zero-mean Gaussian conditional (Ballé 2018).

Both follow CompressAI's maths and names, with one deliberate difference: symbols are plain
``torch.round(latent)`` (no median offset), so the exported edge graph is simply
``round(g_a(x))`` and the integer symbols need no side table. ``symbol_pmfs`` exports float64
probability tables (numpy) that the rANS coder turns into integer CDFs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stereodsc.models.layers import LowerBound

LIKELIHOOD_BOUND = 1e-9


def quantize(x: Tensor, training: bool) -> Tensor:
    """Additive uniform noise in training (differentiable proxy), rounding otherwise."""
    if training:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    return torch.round(x)


def _cap_unit_mass(pmf: np.ndarray) -> np.ndarray:
    """Scale down the rows whose float round-off pushed their sum above 1 (the escape mass is >= 0)."""
    total = pmf.sum(axis=1, keepdims=True)
    return np.where(total > 1.0, pmf * ((1.0 - 1e-12) / total), pmf)


class EntropyBottleneck(nn.Module):
    """Per-channel non-parametric factorized density (Ballé et al. 2017, appendix 6.1).

    ``quantize=False`` leaves the input continuous (no noise, no rounding) and only returns its
    likelihood: NDIC uses this for the decoder-side rate terms of h_y and w.
    The ``quantiles`` parameter (lower, median, upper per channel) is fitted by ``loss()`` (the aux
    loss) to the tail mass; it bounds the symbol range of ``symbol_pmfs``.
    """

    target: Tensor

    def __init__(
        self,
        channels: int,
        filters: tuple[int, ...] = (3, 3, 3),
        init_scale: float = 10.0,
        tail_mass: float = 1e-9,
        quantize: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.quantize = quantize
        self.tail_mass = tail_mass
        widths = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        t = math.log(2.0 / tail_mass - 1.0)
        self.register_buffer("target", torch.tensor([-t, 0.0, t]), persistent=False)
        self.likelihood_bound = LowerBound(LIKELIHOOD_BOUND)

    def _logits_cumulative(self, x: Tensor, stop_gradient: bool) -> Tensor:
        """Logit of the cumulative density at x, shape [C, 1, K]; monotone in x by construction."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            m, b = matrix.to(x.dtype), bias.to(x.dtype)
            if stop_gradient:
                m, b = m.detach(), b.detach()
            logits = torch.matmul(F.softplus(m), logits) + b
            if i < len(self.factors):
                f = self.factors[i].to(x.dtype)
                if stop_gradient:
                    f = f.detach()
                logits = logits + torch.tanh(f) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: Tensor) -> Tensor:
        """P(value - 0.5 < U < value + 0.5) for values [C, 1, K]; sign trick keeps the tails accurate."""
        lower = self._logits_cumulative(values - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(values + 0.5, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (x_hat, likelihood), both [B, C, H, W]."""
        x_hat = quantize(x, self.training) if self.quantize else x
        values = x_hat.transpose(0, 1).reshape(self.channels, 1, -1)
        likelihood = self.likelihood_bound(self._likelihood(values))
        likelihood = likelihood.reshape(self.channels, x.shape[0], *x.shape[2:]).transpose(0, 1)
        return x_hat, likelihood

    def loss(self) -> Tensor:
        """Aux loss: moves ``quantiles`` to the tail_mass/2, median, 1 - tail_mass/2 points of the CDF."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def symbol_pmfs(self) -> tuple[np.ndarray, np.ndarray]:
        """(pmf float64 [C, L], offset int32 [C]): pmf[c, i] = P(symbol = offset[c] + i).

        The range of channel c is floor(lower quantile)..ceil(upper quantile); shorter rows are
        zero-padded to the common length L. Computed in float64 with the same formula as the
        likelihood (without its 1e-9 floor). 1 - row sum is the escape mass.
        """
        lower = torch.floor(self.quantiles[:, 0, 0].detach().double())
        upper = torch.ceil(self.quantiles[:, 0, 2].detach().double())
        lengths = (upper - lower + 1).long().clamp(min=1)
        length = int(lengths.max())
        steps = torch.arange(length, dtype=torch.float64, device=lower.device)
        values = (lower[:, None] + steps[None, :]).unsqueeze(1)
        pmf = self._likelihood(values).squeeze(1)
        pmf = torch.where(steps[None, :] < lengths[:, None], pmf, torch.zeros_like(pmf))
        return _cap_unit_mass(pmf.cpu().numpy()), lower.cpu().numpy().astype(np.int32)


class GaussianConditional(nn.Module):
    """Zero-mean Gaussian with a per-element scale, for the hyperprior's latent (Ballé et al. 2018).

    The coder works from a fixed table of 64 log-spaced scales (0.11..256, as CompressAI):
    ``build_indexes`` maps each predicted scale to a table row, ``symbol_pmfs`` gives one pmf row
    per table entry.
    """

    scale_table: Tensor

    def __init__(
        self, scale_bound: float = 0.11, scale_max: float = 256.0, levels: int = 64, tail_mass: float = 1e-9
    ) -> None:
        super().__init__()
        self.tail_mass = tail_mass
        table = torch.exp(torch.linspace(math.log(scale_bound), math.log(scale_max), levels))
        self.register_buffer("scale_table", table, persistent=False)
        self.scale_bound = LowerBound(scale_bound)
        self.likelihood_bound = LowerBound(LIKELIHOOD_BOUND)

    @staticmethod
    def _standard_cdf(x: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-x / math.sqrt(2.0))

    def _likelihood(self, values: Tensor, scales: Tensor) -> Tensor:
        values = torch.abs(values)  # zero mean: use the lower tail, where erfc is accurate
        upper = self._standard_cdf((0.5 - values) / scales)
        lower = self._standard_cdf((-0.5 - values) / scales)
        return upper - lower

    def forward(self, x: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
        x_hat = quantize(x, self.training)
        likelihood = self._likelihood(x_hat, self.scale_bound(scales))
        return x_hat, self.likelihood_bound(likelihood)

    def build_indexes(self, scales: Tensor) -> Tensor:
        """Index of the smallest table scale >= scale (last row for larger), as int64. ONNX-friendly."""
        table = self.scale_table[:-1].to(scales.dtype)
        below = (scales.unsqueeze(-1) > table).sum(dim=-1)
        return below.to(torch.int64)

    @torch.no_grad()
    def symbol_pmfs(self) -> tuple[np.ndarray, np.ndarray]:
        """(pmf float64 [S, L], offset int32 [S]) for the S table scales, one common symbol range.

        The range is +-ceil(s_max * z) with z the standard-normal quantile of tail_mass / 2.
        """
        table = self.scale_table.detach().double().cpu()
        z = -torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64))
        center = math.ceil(float(table.max()) * float(z))
        values = torch.arange(-center, center + 1, dtype=torch.float64)
        pmf = self._likelihood(values[None, :], table[:, None]).numpy()
        offset = np.full(len(table), -center, dtype=np.int32)
        return _cap_unit_mass(pmf), offset
