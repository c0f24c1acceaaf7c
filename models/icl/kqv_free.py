"""Transformer without key, query or value weights (Abedsoltan, Radhakrishnan, Wu & Belkin 2024).

Each block is a data-dependent feature map followed by an MLP. The feature map is attention whose weights come
from a fixed kernel on the tokens' x-parts and whose values are the tokens themselves:

    a_ij = k(x_i, x_j) / Σ_j' k(x_i, x_j')   (or / n unnormalized),   z_i ← z_i + Σ_{j ≤ n} a_ij z_j,

with the query masked as key/value, then a token-wise MLP with residual. For the query this is a kernel smoother
of the labels (Nadaraya–Watson; with the linear kernel, the one-step-GD statistic (1/n) Σ x_qᵀx_i y_i), which
improves with context length. `KernelSmoother` is that feature map alone, as a predictor with no trained weight
(the label part of ψ(x_q)); `KQVFreeTransformer`'s head reads the query token, the flattened prompt, or both
(`inputs`): the paper's "vectorized MLP" and concatenated predictors. The paper's exact kernel/normalization is
not pinned down here (notes/icl.md §1.4), so both are selectable; the only weight a kernel has is a learned
log-bandwidth per block.

Only the query row is read out, so the last block computes its feature map and MLP for the query only
(`query_only`, default): 1/(n+1) of the last block's work, the same outputs (earlier blocks still need every row).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.icl.mlp import mlp
from models.icl.tasks import stack_columns

_KERNELS = ("linear", "softmax", "gaussian", "laplace", "hilbert")
_INPUTS = ("features", "prompt", "both")


def kernel_attention(z: torch.Tensor, kernel: str, log_h: torch.Tensor, normalize: bool,
                     query_only: bool = False) -> torch.Tensor:
    """Σ_{j ≤ n} a_ij z_j for tokens z [B, N, d+1] (x-part z[..., :-1]); the last row (query) is no key.
    Returns [B, N, d+1], or [B, 1, d+1] (the query row only) when `query_only`."""
    ctx = z[:, :-1]
    x = z[:, -1:, :-1] if query_only else z[..., :-1]
    xc = ctx[..., :-1]
    n = ctx.shape[1]
    if n == 0:
        return torch.zeros_like(z[:, -1:] if query_only else z)
    if kernel == "linear":
        return (x @ xc.transpose(-1, -2)) @ ctx / n
    h = log_h.exp()
    if kernel == "softmax":
        logits = x @ xc.transpose(-1, -2) / h
    else:
        dist = torch.cdist(x, xc)
        if kernel == "gaussian":
            logits = -dist.pow(2) / (2 * h**2)
        elif kernel == "laplace":
            logits = -dist / h
        else:  # hilbert: ‖x − x'‖^{−d}
            logits = -x.shape[-1] * dist.clamp_min(1e-6).log()
    if normalize:
        a = torch.softmax(logits, dim=-1)
    else:
        a = torch.exp(logits.clamp(max=30.0)) / n  # clamp: hilbert/softmax weights can overflow
    return a @ ctx


def _check_kernel(kernel: str, bandwidth: float | None) -> None:
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if bandwidth is not None and not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")


def _log_bandwidth(d: int, kernel: str, bandwidth: float | None) -> float:
    return math.log(bandwidth if bandwidth is not None else (math.sqrt(d) if kernel == "softmax" else 1.0))


class KernelSmoother(nn.Module):
    """The feature map alone as a predictor: ŷ_q = Σ_{j ≤ n} a_qj y_j, the label part of ψ(x_q), with no trained
    weight (a fixed bandwidth). Linear kernel, unnormalized: (1/n) Σ x_qᵀx_j y_j (one GD step from 0 with
    step 1); a normalized kernel: Nadaraya–Watson. forward(x [B, N, d], y [B, N]) -> [B]."""

    predicts_all_positions = False

    def __init__(self, d: int, kernel: str = "linear", normalize: bool = False,
                 bandwidth: float | None = None) -> None:
        super().__init__()
        _check_kernel(kernel, bandwidth)
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        self.d, self.kernel, self.normalize = d, kernel, normalize
        self.register_buffer("log_h", torch.tensor(_log_bandwidth(d, kernel, bandwidth)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"x must have d={self.d} features, got {x.shape[-1]}")
        z = stack_columns(x, y)
        return kernel_attention(z, self.kernel, self.log_h, self.normalize, query_only=True)[:, 0, -1]


class KQVFreeTransformer(nn.Module):
    """Blocks of [kernel feature map + token-wise MLP] on the stacked prompt, then an MLP head.

    inputs="features": the head sees the query token after the blocks (works for any context length);
    "prompt": only the flattened prompt (= MLPICL); "both": their concatenation. forward(x, y) -> [B].
    n_points (rows per prompt, n + 1) is needed only when the head reads the flattened prompt. query_only=False
    computes the last block for every row (the pre-optimization path, kept for the benchmark and its test).
    """

    predicts_all_positions = False

    def __init__(self, d: int, n_points: int | None = None, kernel: str = "softmax", normalize: bool = True,
                 n_blocks: int = 1, hidden: int = 256, inputs: str = "both", bandwidth: float | None = None,
                 query_only: bool = True) -> None:
        super().__init__()
        _check_kernel(kernel, bandwidth)
        if inputs not in _INPUTS:
            raise ValueError(f"inputs must be one of {_INPUTS}, got {inputs!r}")
        if d < 1 or n_blocks < 0 or hidden < 1:
            raise ValueError(f"need d >= 1, n_blocks >= 0, hidden >= 1; got {d}, {n_blocks}, {hidden}")
        if inputs != "features" and (n_points is None or n_points < 1):
            raise ValueError(f"inputs={inputs!r} reads the flattened prompt and needs n_points >= 1, got {n_points}")
        self.d, self.n_points, self.kernel, self.normalize, self.inputs = d, n_points, kernel, normalize, inputs
        self.query_only = query_only
        e = d + 1
        self.log_h = nn.Parameter(torch.full((max(n_blocks, 1),), _log_bandwidth(d, kernel, bandwidth)))
        self.mlps = nn.ModuleList(mlp([e, hidden, e]) for _ in range(n_blocks))
        head_in = (e if inputs != "prompt" else 0) + ((n_points or 0) * e if inputs != "features" else 0)
        self.head = mlp([head_in, hidden, hidden, 1])

    def feature_map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first block's kernel feature for the query, ψ(x_q) = Σ_j a_qj (x_j, y_j): [B, d+1]."""
        z = stack_columns(x, y)
        return kernel_attention(z, self.kernel, self.log_h[0], self.normalize, query_only=True)[:, 0]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d:
            raise ValueError(f"x must have d={self.d} features, got {x.shape[-1]}")
        if self.inputs != "features" and x.shape[1] != self.n_points:
            raise ValueError(f"prompts must have n_points={self.n_points} rows, got {x.shape[1]}")
        z0 = stack_columns(x, y)
        z, last = z0, len(self.mlps) - 1
        for i, m in enumerate(self.mlps):
            if self.query_only and i == last:  # only the query row is read out: compute nothing else
                z = z[:, -1:] + kernel_attention(z, self.kernel, self.log_h[i], self.normalize, query_only=True)
            else:
                z = z + kernel_attention(z, self.kernel, self.log_h[i], self.normalize)
            z = z + m(z)
        parts = []
        if self.inputs != "prompt":
            parts.append(z[:, -1])
        if self.inputs != "features":
            parts.append(z0.flatten(1))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)
