"""Linear self-attention (LSA) on the stacked prompt matrix, and the linear transformer block (LTB).

Tokens are the rows z_i = (x_i, y_i) of Z ∈ R^{B×N×(d+1)}, the query row last with label 0. One layer is

    Z ← Z + Σ_h (1/n) · P_h Z M (Zᵀ Q_hᵀ Z)         (columns-as-tokens, Z = zᵀ; Ahn et al. 2023 write Q_h for
                                                      our Q_hᵀ: the same class of layers, Q ↔ Qᵀ)

where M = diag(1, …, 1, 0) removes the query as key/value, so nothing reads the query's (hidden) label. In rows,
with C = (1/n) Σ_{i≤n} z_i z_iᵀ, the update is z ← z + z Q_h C P_hᵀ: O(N d²) and no N×N matrix. The prediction is
ŷ_q = −Z_L[q, d] (Ahn et al.'s sign), so that with the *restricted* parameters P = [[0,0],[0,1]],
Q = [[A,0],[0,0]] layer ℓ is exactly one step of preconditioned GD, w ← w + Γ (1/n) Σ (y_i − x_iᵀw) x_i with
Γ = −A_ℓ, the label row carrying the residuals (notes/icl.md §1.1).
"""

from __future__ import annotations

import torch
from torch import nn

from models.icl.tasks import stack_columns

_PARAMS = ("restricted", "sparse", "full")


def lsa_update(z: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_h (1/n) P_h Z M Zᵀ Q_hᵀ Z in the tokens-as-columns notation (Z = zᵀ), computed on tokens-as-rows
    z [B, N, d+1] as z Q_h C P_hᵀ with C = (1/n) Σ_i z_i z_iᵀ; p and q [H, d+1, d+1]; the query (last row) is masked
    as key/value, n = N − 1."""
    n = z.shape[1] - 1
    ctx = z[:, :-1]
    c = ctx.transpose(-1, -2) @ ctx / max(n, 1)  # (1/n) Σ_i z_i z_iᵀ over context rows only
    # Σ_h Q_h C P_hᵀ, one (d+1)×(d+1) matrix per prompt
    mix = torch.einsum("hab,nbc,hdc->nad", q, c, p)
    return z @ mix


class LinearAttention(nn.Module):
    """L layers of multi-head linear self-attention with the query column masked (+ optional linear MLP).

    param: "restricted" (P = [[0,0],[0,1]], Q = [[A,0],[0,0]]: the preconditioned-GD class, one A per layer/head),
    "sparse" (P = [[B,0],[0,1]] too, Ahn et al.'s parameterization, "GD++"), or "full" (arbitrary P, Q: the
    unrestricted class of the task-diversity paper). mlp_width m > 0 adds after every layer the LTB's linear MLP
    Z ← Z + Z W₁ᵀ W₂ᵀ (W₁: m×(d+1), W₂: (d+1)×m). forward(x, y) reads x [B, N, d], y [B, N] (y's last entry is
    ignored) and returns the query predictions [B].
    """

    predicts_all_positions = False

    def __init__(
        self,
        d: int,
        n_layers: int = 1,
        n_heads: int = 1,
        param: str = "restricted",
        mlp_width: int = 0,
        init_std: float = 0.01,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if n_layers < 1 or n_heads < 1:
            raise ValueError(f"n_layers and n_heads must be >= 1, got {n_layers}, {n_heads}")
        if param not in _PARAMS:
            raise ValueError(f"param must be one of {_PARAMS}, got {param!r}")
        if mlp_width < 0:
            raise ValueError(f"mlp_width must be >= 0, got {mlp_width}")
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.d, self.n_layers, self.n_heads, self.param, self.mlp_width = d, n_layers, n_heads, param, mlp_width
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        e = d + 1

        def rnd(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * init_std)

        if param == "full":
            self.Q = rnd(n_layers, n_heads, e, e)
            self.P = rnd(n_layers, n_heads, e, e)
            with torch.no_grad():  # start from the value path P = e_y e_yᵀ that the GD solution uses
                self.P[..., d, d] += 1.0
        else:
            self.A = rnd(n_layers, n_heads, d, d)
            self.B = rnd(n_layers, n_heads, d, d) if param == "sparse" else None
        if mlp_width:
            self.W1 = rnd(n_layers, mlp_width, e)
            self.W2 = rnd(n_layers, e, mlp_width)

    def pq(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The full (d+1)×(d+1) P_h and Q_h of one layer, stacked over heads: [H, d+1, d+1] each."""
        if self.param == "full":
            return self.P[layer], self.Q[layer]
        d, h = self.d, self.n_heads
        a = self.A[layer]
        q = a.new_zeros(h, d + 1, d + 1)
        q[:, :d, :d] = a
        p = a.new_zeros(h, d + 1, d + 1)
        p[:, d, d] = 1.0
        if self.B is not None:
            p[:, :d, :d] = self.B[layer]
        return p, q

    def layer(self, z: torch.Tensor, i: int) -> torch.Tensor:
        """Apply layer i (attention, then the linear MLP if any) to tokens z [B, N, d+1]."""
        p, q = self.pq(i)
        z = z + lsa_update(z, p, q)
        if self.mlp_width:
            z = z + z @ self.W1[i].T @ self.W2[i].T
        return z

    def embed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Stacked tokens Z0 with the query's label zeroed."""
        if x.shape[-1] != self.d:
            raise ValueError(f"x must have d={self.d} features, got {x.shape[-1]}")
        return stack_columns(x, y)

    def forward(self, x: torch.Tensor, y: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Query predictions [B] after `depth` layers (default all). depth > n_layers repeats the last layer,
        which is how an unshared model is "run deeper" than it was trained."""
        depth = self.n_layers if depth is None else depth
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        z = self.embed(x, y)
        for i in range(depth):
            z = self.layer(z, min(i, self.n_layers - 1))
        return -z[:, -1, self.d]


class LTB(LinearAttention):
    """Linear transformer block (Zhang, Wu & Bartlett 2024): unrestricted linear attention followed by a linear
    MLP with residual, H = Z + (1/n) W^{PV} Z M Zᵀ W^{KQ} Z, LTB(Z) = H + W₂W₁H. The MLP lets the model add a
    fixed x_qᵀβ* term, which linear attention alone cannot when the task prior has a non-zero mean β*.
    mlp_width defaults to d + 1."""

    def __init__(self, d: int, n_layers: int = 1, n_heads: int = 1, mlp_width: int | None = None,
                 param: str = "full", init_std: float = 0.01, seed: int | None = None) -> None:
        width = d + 1 if mlp_width is None else mlp_width
        if width < 1:
            raise ValueError(f"mlp_width must be >= 1 for an LTB, got {width}")
        super().__init__(d, n_layers, n_heads, param, width, init_std, seed)
