"""Transformer building blocks shared by every model in the package: attention, MLP, norms, a pre-norm block.

One implementation of causal self-attention (through `scaled_dot_product_attention`, so CUDA picks flash/memory-
efficient kernels and the CPU a fused one) serves GPT2ICL, the looped transformer and the LM models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
_NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """x / rms(x) · g (Zhang & Sennrich 2019): LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    """LayerNorm (optionally without bias) or RMSNorm, by name."""
    if kind not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {kind!r}")
    return nn.LayerNorm(dim, bias=bias) if kind == "layernorm" else RMSNorm(dim)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and SDPA; causal unless told otherwise.

    Dropout is applied only when p > 0 and the module trains, so inference and p = 0 pay nothing for it.
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_head, self.dropout, self.causal = n_head, dropout, causal
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """x [B, T, C] -> [B, T, C]; with `rows`, only those query rows are computed (all T tokens stay keys),
        which saves the work of outputs nobody reads, e.g. the last layer's outputs at label tokens."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        mask = None
        if rows is not None:
            q = q[:, :, rows]
            if self.causal:
                pos = torch.arange(t, device=x.device)
                mask = pos[rows].unsqueeze(1) >= pos.unsqueeze(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=self.causal and rows is None)
        y = self.proj(y.transpose(1, 2).reshape(b, q.shape[2], c))
        return F.dropout(y, p, True) if p > 0 else y


class MLP(nn.Module):
    """Position-wise Linear → activation → Linear, hidden width `ratio`·n_embd."""

    def __init__(self, n_embd: int, ratio: float = 4.0, bias: bool = True, activation: str = "gelu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        hidden = int(ratio * n_embd)
        if hidden < 1:
            raise ValueError(f"ratio * n_embd must be >= 1, got {ratio} * {n_embd}")
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.activation, self.dropout = activation, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        y = self.proj(h)
        return F.dropout(y, self.dropout, True) if self.dropout > 0 and self.training else y


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x)) (the MLP can be switched off, which
    the LTB paper's GPT-2-without-MLP ablation needs)."""

    def __init__(self, n_embd: int, n_head: int, mlp: bool = True, mlp_ratio: float = 4.0, bias: bool = True,
                 norm: str = "layernorm", activation: str = "gelu", dropout: float = 0.0, causal: bool = True):
        super().__init__()
        self.ln_1 = make_norm(norm, n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias, dropout, causal)
        self.ln_2 = make_norm(norm, n_embd, bias) if mlp else None
        self.mlp = MLP(n_embd, mlp_ratio, bias, activation, dropout) if mlp else None

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """x [B, T, C] -> [B, T, C], or [B, T', C] for the selected query `rows` only."""
        a = self.attn(self.ln_1(x), rows)
        x = (x if rows is None else x[:, rows]) + a
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


def residual_projections(module: nn.Module) -> list[nn.Parameter]:
    """The weights that write into the residual stream: every `Block`'s attention and MLP output projection, and
    whatever a module lists in its own `residual_projections()` (a Llama-style block, say). Not q/k/v or the MLP's
    up projection, which read from the stream."""
    out: list[nn.Parameter] = []
    for m in module.modules():
        if isinstance(m, Block):
            out.append(m.attn.proj.weight)
            if m.mlp is not None:
                out.append(m.mlp.proj.weight)
        elif callable(getattr(m, "residual_projections", None)) and m is not module:
            out.extend(m.residual_projections())
    return out


def init_gpt_weights(module: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2 initialisation: N(0, std) weights, zero biases, and the residual output projections (only those:
    see `residual_projections`) scaled by 1/√(2L), so the residual stream's variance does not grow with depth."""
    scaled = {id(p) for p in residual_projections(module)}
    for _, p in module.named_parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, 0.0, std / math.sqrt(2 * n_layer) if id(p) in scaled else std)
    for name, p in module.named_parameters():
        if p.ndim < 2 and name.endswith("bias"):
            nn.init.zeros_(p)


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def transformer_flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward: 6N + 12·L·C·T (PaLM appendix B, as in nanoGPT)."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * seq_len
