"""Late-interaction ranking: ColBERT's MaxSim and LITE's learnable late interaction (Ji et al., WANT@ICML 2024).

Both score a query against a document from the token embeddings of one shared encoder, Q [L_q, d] and
D [L_d, d] (the documents' are computed once and stored), through the similarity matrix S = Q·Dᵀ [L_q, L_d]:

    MaxSim (Khattab & Zaharia 2020):  s = Σ_i max_j S_ij
    LITE:                             s = w · vec(g(f(S)ᵀ))          f: a shared MLP over each row of S
                                                                     (R^{L_d} → R^{m₁}), g: a shared MLP over each
                                                                     column of the result (R^{L_q} → R^{m₂})

MaxSim sees each query token's best match only, so it cannot tell *where* the matches are; LITE's row MLP reads
the whole row (the positions of the matches) and its column MLP combines query tokens non-additively, which makes
it a universal approximator of continuous scoring functions of S (Ji et al., Theorem 1) — conjunctions and
adjacency of query tokens included. LITE fixes L_q and L_d (the MLPs' input sizes); `doc_vectors` < L_d makes
LITE store fewer vectors per document (a learned map of the L_d token vectors to doc_vectors, applied before
storage), which is how a late-interaction model can store less than ColBERT (the paper reports 0.25×).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.nn import Block

__all__ = ["TokenEncoder", "maxsim", "LiteScorer", "LateInteractionRanker", "mrr_at_k", "storage_per_document"]


class TokenEncoder(nn.Module):
    """The shared small encoder: token + position embeddings, `n_layer` bidirectional transformer blocks
    (0: each token's embedding is a function of that token alone, a bag of tokens), a linear map to `dim`, and
    L2 normalisation (ColBERT's), so every similarity lies in [−1, 1]. forward(ids [..., L]) -> [..., L, dim]."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, n_embd: int = 64, n_layer: int = 1,
                 n_head: int = 2, normalize: bool = True, seed: int | None = None) -> None:
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("max_len", max_len), ("dim", dim), ("n_embd", n_embd),
                        ("n_head", n_head)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if n_layer < 0:
            raise ValueError(f"n_layer must be >= 0, got {n_layer}")
        self.max_len, self.normalize = max_len, normalize
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(max_len, n_embd) if n_layer > 0 else None
            self.blocks = nn.ModuleList(Block(n_embd, n_head, causal=False) for _ in range(n_layer))
            self.ln = nn.LayerNorm(n_embd)
            self.out = nn.Linear(n_embd, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lead, length = ids.shape[:-1], ids.shape[-1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} is longer than the encoder's max_len={self.max_len}")
        x = self.wte(ids.reshape(-1, length))
        if self.wpe is not None:
            x = x + self.wpe.weight[:length]
        for block in self.blocks:
            x = block(x)
        e = self.out(self.ln(x))
        if self.normalize:
            e = F.normalize(e, dim=-1)
        return e.reshape(*lead, length, -1)


def _similarity(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """S = Q·Dᵀ for q [B, L_q, dim] and d [B, L_d, dim] or [B, N, L_d, dim] -> [B, L_q, L_d] or [B, N, L_q, L_d]."""
    if q.ndim != 3 or d.ndim not in (3, 4) or q.shape[-1] != d.shape[-1] or q.shape[0] != d.shape[0]:
        raise ValueError(f"need q [B, L_q, dim] and d [B, L_d, dim] or [B, N, L_d, dim] with the same B and dim, "
                         f"got {tuple(q.shape)} and {tuple(d.shape)}")
    if d.ndim == 3:
        return q @ d.transpose(-1, -2)
    return torch.einsum("bqe,bnle->bnql", q, d)


def maxsim(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """ColBERT's score Σ_i max_j (Q·Dᵀ)_ij: [B] for one document per query, [B, N] for N documents."""
    return _similarity(q, d).amax(dim=-1).sum(dim=-1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class LiteScorer(nn.Module):
    """LITE's scorer on S [..., L_q, L_d]: row MLP f (L_d → row_hidden → row_out) on every row, column MLP g
    (L_q → col_hidden → col_out) on every column of f's output, then a linear map of the flattened
    [row_out, col_out] to a scalar. forward(S) -> [...]."""

    def __init__(self, q_len: int, d_len: int, row_hidden: int = 128, row_out: int = 32, col_hidden: int = 32,
                 col_out: int = 8) -> None:
        super().__init__()
        for name, v in (("q_len", q_len), ("d_len", d_len), ("row_hidden", row_hidden), ("row_out", row_out),
                        ("col_hidden", col_hidden), ("col_out", col_out)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.q_len, self.d_len = q_len, d_len
        self.row = _mlp(d_len, row_hidden, row_out)
        self.col = _mlp(q_len, col_hidden, col_out)
        self.head = nn.Linear(row_out * col_out, 1)

    def rows(self, s: torch.Tensor) -> torch.Tensor:
        """f applied to every row: [..., L_q, L_d] -> [..., L_q, row_out]."""
        if s.shape[-2:] != (self.q_len, self.d_len):
            raise ValueError(f"similarity matrix must end in [L_q={self.q_len}, L_d={self.d_len}], got "
                             f"{tuple(s.shape)}")
        return self.row(s)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        r = self.rows(s)                          # [..., L_q, row_out]
        c = self.col(r.transpose(-1, -2))         # [..., row_out, col_out]
        return self.head(c.flatten(-2)).squeeze(-1)


class LateInteractionRanker(nn.Module):
    """An encoder shared by queries and documents plus a scorer: 'maxsim' (no parameters) or 'lite'.

    forward(query_ids [B, L_q], doc_ids [B, N, L_d]) -> scores [B, N]. For 'lite', doc_vectors (default L_d)
    is the number of vectors stored per document: when smaller, a learned [doc_vectors, L_d] map pools the
    document's token vectors before scoring (`doc_embeddings` gives what is stored). MaxSim's scores are
    scaled by a learned temperature (initially maxsim_scale), which trains it and does not change its ranking."""

    def __init__(self, encoder: TokenEncoder, scorer: str, q_len: int, d_len: int, doc_vectors: int | None = None,
                 row_hidden: int = 128, row_out: int = 32, col_hidden: int = 32, col_out: int = 8,
                 maxsim_scale: float = 10.0) -> None:
        super().__init__()
        if scorer not in ("maxsim", "lite"):
            raise ValueError(f"scorer must be 'maxsim' or 'lite', got {scorer!r}")
        doc_vectors = d_len if doc_vectors is None else doc_vectors
        if not 1 <= doc_vectors <= d_len:
            raise ValueError(f"doc_vectors must be in [1, d_len={d_len}], got {doc_vectors}")
        if scorer == "maxsim" and doc_vectors != d_len:
            raise ValueError("MaxSim stores every document token vector: doc_vectors must equal d_len")
        self.encoder, self.kind, self.q_len, self.d_len, self.doc_vectors = (
            encoder, scorer, q_len, d_len, doc_vectors)
        self.pool = nn.Linear(d_len, doc_vectors, bias=False) if doc_vectors < d_len else None
        self.lite = (LiteScorer(q_len, doc_vectors, row_hidden, row_out, col_hidden, col_out)
                     if scorer == "lite" else None)
        # MaxSim of unit vectors lies in [-L_q, L_q]: too flat a softmax to train on for short queries, so its
        # scores are multiplied by a learned temperature (as CLIP's logit scale; it leaves the ranking alone).
        # LITE's linear head has its own scale.
        self.log_scale = nn.Parameter(torch.tensor(math.log(maxsim_scale))) if scorer == "maxsim" else None

    def doc_embeddings(self, doc_ids: torch.Tensor) -> torch.Tensor:
        """What the index stores per document: [..., doc_vectors, dim]."""
        if doc_ids.shape[-1] != self.d_len:
            raise ValueError(f"documents must have d_len={self.d_len} tokens, got {doc_ids.shape[-1]}")
        d = self.encoder(doc_ids)
        if self.pool is not None:
            d = self.pool(d.transpose(-1, -2)).transpose(-1, -2)
        return d

    def score_embeddings(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if self.lite is None:
            return maxsim(q, d) * self.log_scale.exp()
        return self.lite(_similarity(q, d))

    def forward(self, query_ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
        if query_ids.shape[-1] != self.q_len:
            raise ValueError(f"queries must have q_len={self.q_len} tokens, got {query_ids.shape[-1]}")
        return self.score_embeddings(self.encoder(query_ids), self.doc_embeddings(doc_ids))

    def storage_per_document(self, bytes_per_value: int = 4) -> int:
        """Bytes the index keeps per document (doc_vectors × dim values)."""
        return storage_per_document(self.doc_vectors, self.encoder.out.out_features, bytes_per_value)


def storage_per_document(vectors: int, dim: int, bytes_per_value: int = 4) -> int:
    """vectors × dim × bytes_per_value (4: fp32, 2: fp16)."""
    if vectors < 1 or dim < 1 or bytes_per_value < 1:
        raise ValueError(f"vectors, dim and bytes_per_value must be >= 1, got {vectors}, {dim}, {bytes_per_value}")
    return vectors * dim * bytes_per_value


def mrr_at_k(scores: torch.Tensor, positive: int = 0, k: int = 10) -> float:
    """Mean reciprocal rank at k of candidate `positive` among each row of scores [Q, N] (0 when it ranks below
    k). Ties are broken uniformly at random, in expectation: a scorer that cannot separate the positive from t
    tied negatives gets the mean of 1/r over the t + 1 ranks they share, not the best of them."""
    if scores.ndim != 2 or not 0 <= positive < scores.shape[1]:
        raise ValueError(f"scores must be [queries, candidates] with positive in range, got {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = scores[:, positive : positive + 1]
    others = torch.cat([scores[:, :positive], scores[:, positive + 1:]], dim=1)
    greater = (others > pos).sum(1)
    ties = (others == pos).sum(1)
    ranks = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64, device=scores.device)
    recip = torch.where(ranks <= k, 1.0 / ranks, torch.zeros_like(ranks))
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=scores.device), recip.cumsum(0)])
    # mean of recip over ranks greater+1 .. greater+ties+1
    total = cum[greater + ties + 1] - cum[greater]
    return float((total / (ties + 1)).mean())
