"""Looped (weight-shared) transformers: one block applied T times.

kind="linear" (Gatmiry et al. ICML 2024): one linear-attention layer (models.icl.linear) looped,
Z_{t+1} = Z_t + (1/n) P Z_t M Z_tᵀ Q Z_t with the same (P, Q) every loop; restricted, it is T steps of
preconditioned GD with one shared preconditioner, so running more loops keeps descending.
kind="gpt2" (Yang et al. 2023): a GPT-2 backbone of `n_layer` blocks looped with input injection,
h_t = backbone(h_{t−1} + e), h_0 = 0, e the read-in embeddings, reading out after every loop; training uses
the loss over the last `window` loops, and earlier loops run without gradient (memory).
"""

from __future__ import annotations

import torch
from torch import nn

from models.icl.gpt2 import GPT2ICL
from models.icl.linear import LinearAttention

_KINDS = ("linear", "gpt2")


class LoopedTransformer(nn.Module):
    """One shared block looped n_loops times. forward(x, y, n_loops=None, return_all=False) returns the final
    predictions — [B] for kind="linear", [B, N] for kind="gpt2" — or, with return_all, those after each of the
    last `window` loops stacked first ([window, B] or [window, B, N]); n_loops may exceed the trained count."""

    def __init__(
        self,
        d: int,
        n_loops: int,
        kind: str = "linear",
        window: int | None = None,
        *,
        param: str = "restricted",
        n_heads: int | None = None,
        n_points: int = 41,
        n_layer: int = 1,
        n_embd: int = 256,
        init_std: float = 0.01,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if n_loops < 1:
            raise ValueError(f"n_loops must be >= 1, got {n_loops}")
        window = n_loops if window is None else window
        if not 1 <= window <= n_loops:
            raise ValueError(f"window must be in [1, n_loops={n_loops}], got {window}")
        self.d, self.kind, self.n_loops, self.window = d, kind, n_loops, window
        self.predicts_all_positions = kind == "gpt2"
        if kind == "linear":
            self.block = LinearAttention(d, 1, n_heads or 1, param, init_std=init_std, seed=seed)
        else:
            self.block = GPT2ICL(d, n_points, n_layer, n_embd, n_heads or 8, seed=seed)

    def forward(self, x: torch.Tensor, y: torch.Tensor, n_loops: int | None = None,
                return_all: bool = False) -> torch.Tensor:
        t_max = self.n_loops if n_loops is None else n_loops
        if t_max < 1:
            raise ValueError(f"n_loops must be >= 1, got {t_max}")
        keep_from = max(t_max - self.window, 0) if return_all or self.kind == "gpt2" else t_max - 1
        outs = []
        if self.kind == "linear":
            z = self.block.embed(x, y)
            for t in range(t_max):
                z = self.block.layer(z, 0)
                if t >= keep_from:
                    outs.append(-z[:, -1, self.d])
        else:
            g = self.block
            e = g.read_in(g.tokens(x, y))
            h = torch.zeros_like(e)
            for t in range(t_max):
                with torch.set_grad_enabled(torch.is_grad_enabled() and t >= keep_from):
                    h = g.backbone(h + e)
                if t >= keep_from:
                    outs.append(g.read_out(h[:, ::2]).squeeze(-1))
        return torch.stack(outs) if return_all else outs[-1]
