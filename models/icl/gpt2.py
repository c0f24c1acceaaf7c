"""GPT-2-style transformer for in-context regression (Garg et al. 2022) on the interleaved layout.

Tokens x_1, ỹ_1, …, x_N (the query's label token is dropped: nothing may read it) → linear read-in + learned
positions → L pre-norm causal blocks (models.nn) → final norm → linear read-out at the x positions, so one pass
predicts y_k from the k − 1 pairs before it, for every k: the whole error-vs-context-length curve.
"""

from __future__ import annotations

import torch
from torch import nn

from models.icl.tasks import interleave
from models.nn import Block, count_params, init_gpt_weights, make_norm, transformer_flops_per_token


class GPT2ICL(nn.Module):
    """Interleaved-token GPT-2 for ICL: forward(x [B, N, d], y [B, N]) -> predictions [B, N], entry k made from
    the pairs before row k (y's last entry is never read). Sizes: standard 12×256×8 heads (~9.5M parameters),
    small 6×128×4, tiny 3×64×2. mlp=False removes every block's MLP (the LTB paper's ablation). x_only
    runs the last block only at the x positions: same outputs, ~4% less work, which pays on CPU, but its masked
    attention stops CUDA graphs (torch.compile mode="reduce-overhead": 58 vs 165 steps/s on an H100), so the
    default None means "on CPU only"."""

    predicts_all_positions = True

    def __init__(self, d: int, n_points: int, n_layer: int = 12, n_embd: int = 256, n_head: int = 8,
                 mlp: bool = True, dropout: float = 0.0, seed: int | None = None, x_only: bool | None = None) -> None:
        super().__init__()
        if d < 1 or n_points < 1:
            raise ValueError(f"d and n_points must be >= 1, got d={d}, n_points={n_points}")
        if n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {n_layer}")
        self.d, self.n_points, self.n_layer, self.n_embd, self.x_only = d, n_points, n_layer, n_embd, x_only
        self.read_in = nn.Linear(d, n_embd)
        self.wpe = nn.Embedding(2 * n_points - 1, n_embd)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, mlp=mlp, activation="gelu_tanh", dropout=dropout) for _ in range(n_layer)
        )
        self.ln_f = make_norm("layernorm", n_embd)
        self.read_out = nn.Linear(n_embd, 1)
        with torch.random.fork_rng(devices=[]):  # a seed fixes the init without touching the global RNG
            if seed is not None:
                torch.manual_seed(seed)
            init_gpt_weights(self, n_layer)
            # read-in/out keep PyTorch's Linear init, as in Garg et al. (they sit outside HF's GPT2Model, whose
            # init never touches them): at N(0, 0.02) the token content (x, and y in one coordinate) entered
            # the stream at the scale of the position embeddings, and a 3 × 64 model stayed above the zero
            # predictor for 1000 steps where HF's GPT2Model with default read-in/out learned (0.72 vs 1.03)
            self.read_in.reset_parameters()
            self.read_out.reset_parameters()

    def tokens(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Interleaved tokens without the query's label token: [B, 2N − 1, d]."""
        if x.shape[-1] != self.d:
            raise ValueError(f"x must have d={self.d} features, got {x.shape[-1]}")
        if x.shape[1] > self.n_points:
            raise ValueError(f"prompts may have at most n_points={self.n_points} rows, got {x.shape[1]}")
        return interleave(x, y)[:, :-1]

    def backbone(self, h: torch.Tensor, x_only: bool = False) -> torch.Tensor:
        """Positions + blocks + final norm on embedded tokens h [B, T, C]. x_only computes the last block only
        at the x positions (the only outputs read out), returning [B, ⌈T/2⌉, C]: ~4% less work at 12 layers."""
        h = h + self.wpe.weight[: h.shape[1]]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, slice(0, None, 2) if x_only and i == last else None)
        return self.ln_f(h)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_only = self.x_only if self.x_only is not None else x.device.type == "cpu"
        h = self.backbone(self.read_in(self.tokens(x, y)), x_only=x_only)
        return self.read_out(h if x_only else h[:, ::2]).squeeze(-1)

    def flops_per_token(self, n_points: int | None = None) -> float:
        """Training FLOPs per token (6N + attention), for MFU."""
        t = 2 * (n_points or self.n_points) - 1
        return transformer_flops_per_token(count_params(self), self.n_layer, self.n_embd, t)
