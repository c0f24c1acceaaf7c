"""MLP on the flattened prompt: the ICL baseline that can learn a task pool but has no notion of context."""

from __future__ import annotations

import torch
from torch import nn

from models.icl.tasks import stack_columns


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with GELU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MLPICL(nn.Module):
    """ŷ_q = MLP(vec(Z)) with Z the stacked prompt [x_1, y_1, …, x_n, y_n, x_q, 0] of a fixed n_points = n + 1
    rows (Abedsoltan et al.'s vectorized-prompt baseline). forward(x, y) -> [B]."""

    predicts_all_positions = False

    def __init__(self, d: int, n_points: int, hidden: int = 512, depth: int = 2) -> None:
        super().__init__()
        if d < 1 or n_points < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"d, n_points, hidden, depth must be >= 1, got {d}, {n_points}, {hidden}, {depth}")
        self.d, self.n_points = d, n_points
        self.net = mlp([n_points * (d + 1)] + [hidden] * depth + [1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.n_points, self.d):
            raise ValueError(f"x must be [B, n_points={self.n_points}, d={self.d}], got {tuple(x.shape)}")
        return self.net(stack_columns(x, y).flatten(1)).squeeze(-1)
