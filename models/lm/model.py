"""A decoder-only GPT (Radford et al. 2019) from the shared blocks of `models.nn`, after nanoGPT's `model.py`.

tokens → token + learned position embeddings → L pre-norm causal blocks → final norm → a linear head whose
weight is the token embedding's (weight tying: one V×C matrix reads tokens in and writes logits out). The block
list is a plain `nn.ModuleList` that `make_block` / `with_blocks` rebuild, so growth (stacking, MIDAS) is a
list operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.nn import Block, init_gpt_weights, make_norm, transformer_flops_per_token

_NORMS = ("layernorm", "rmsnorm")
_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT. block_size is the longest context; vocab_size the number of token ids.
    bias: biases in linear layers and LayerNorms (GPT-2: yes; nanoGPT's default: no, a little faster and
    better). tie_weights: the head reuses the token embedding. Named shapes: `GPTConfig.preset(name)`."""

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    mlp_ratio: float = 4.0
    norm: str = "layernorm"
    activation: str = "gelu"
    tie_weights: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named shape (see PRESETS), with fields overridden by keyword, e.g. preset("gpt2", block_size=256)."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, GPTConfig] = {
    # OpenAI's GPT-2 family (124M, 350M, 774M, 1558M), as released: biases, tied head, GELU (tanh form)
    "gpt2": GPTConfig(activation="gelu_tanh"),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024, activation="gelu_tanh"),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280, activation="gelu_tanh"),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600, activation="gelu_tanh"),
    # nanoGPT's character-level Shakespeare models (65 characters): its GPU "baby GPT" and its CPU configuration
    "shakespeare-char": GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2,
                                  bias=False),
    "shakespeare-char-cpu": GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False),
    "tiny": GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False),
}


class GPT(nn.Module):
    """Decoder-only language model: forward(idx [B, T] int) -> logits [B, T, vocab_size].

    seed fixes the initialisation without touching the global RNG. Blocks are `models.nn.Block`s in
    `self.blocks`; `make_block()` builds a fresh one of this model's shape and `with_blocks(blocks)` returns
    this model with another block list (its config's n_layer updated), which is all growth needs."""

    per_sample_positions: bool = False
    """True: positions are looked up per example (the same values), so Opacus' hooks can give `wpe` per-sample
    gradients (a slice of `wpe.weight` has no grad sampler). Set it on a model before wrapping it for DP-SGD."""

    def __init__(self, config: GPTConfig, seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(self.make_block() for _ in range(c.n_layer))
        self.ln_f = make_norm(c.norm, c.n_embd, c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            init_gpt_weights(self, c.n_layer, c.init_std)

    # ------------------------------------------------------------------------------------------- structure
    def make_block(self) -> Block:
        """A freshly constructed block of this model's shape (not initialised: see `init_block`)."""
        c = self.config
        return Block(c.n_embd, c.n_head, mlp_ratio=c.mlp_ratio, bias=c.bias, norm=c.norm, activation=c.activation,
                     dropout=c.dropout)

    def init_block(self, block: Block, n_layer: int | None = None, seed: int | None = None) -> Block:
        """GPT-2 initialisation of one block for a model of `n_layer` layers (default: this model's)."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            init_gpt_weights(block, n_layer or self.config.n_layer, self.config.init_std)
        return block

    def with_blocks(self, blocks: Sequence[Block]) -> GPT:
        """This model with `blocks` as its block list (kept modules are shared, not copied); config.n_layer
        follows. Embeddings, final norm and head are kept."""
        if not blocks:
            raise ValueError("a GPT needs at least one block")
        self.blocks = nn.ModuleList(blocks)
        self.config = dataclasses.replace(self.config, n_layer=len(blocks))
        return self

    # ------------------------------------------------------------------------------------------- compute
    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, C] of token ids idx [B, T]."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be [batch, time], got shape {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} is longer than the model's context block_size="
                             f"{self.config.block_size}")
        if self.per_sample_positions:  # one lookup per example: Opacus' Embedding sampler needs the batch dim
            pos = self.wpe(torch.arange(t, device=idx.device).expand(idx.shape[0], t))
        else:
            pos = self.wpe.weight[:t]
        x = self.drop(self.wte(idx) + pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(idx))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample max_new_tokens continuations of idx [B, T], feeding back at most block_size tokens."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[:, -1] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    # ------------------------------------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Distinct parameters (a tied head counts once). non_embedding leaves out the position embedding (and
        the token embedding when untied), as nanoGPT counts for FLOPs: a lookup is no matmul."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if non_embedding:
            n -= self.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, forward + backward: 6N + 12·L·C·T (PaLM appendix B, as nanoGPT)."""
        c = self.config
        return transformer_flops_per_token(self.num_params(non_embedding=True), len(self.blocks), c.n_embd,
                                           seq_len or c.block_size)


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of batch (x [B, T], y [B, T]); y = -1 is ignored."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-1)
