"""The synthetic ranking task of `lite-ranking`: a document is relevant to a query iff it contains the query's
tokens as one contiguous span, in order (for a 2-token query: the bigram "q₁ q₂").

Documents are `d_len` uniform random tokens. For each query the candidates are one positive (a random document
with the span planted at a random position) and negatives of three kinds, in the proportions `hard_frac` /
`partial_frac` / rest:
- hard: every query token is present, but never as the span (the tokens scattered, or the span reversed);
- partial: all query tokens but one are present (scattered);
- random: a random document.
A negative that contains the span by chance is redrawn, so labels are exact. Queries are split by a hash of the
span into training and held-out sets, so evaluation queries are spans never seen in training.

Every batch is a pure function of (seed, index): step-indexed, so a resumed run is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.data import index_seed


@dataclass(frozen=True)
class SpanTask:
    vocab_size: int
    q_len: int
    d_len: int
    hard_frac: float = 0.5
    partial_frac: float = 0.25
    heldout_mod: int = 5  # a span is held out when hash(span) % heldout_mod == 0

    def __post_init__(self) -> None:
        if self.q_len < 2 or self.q_len > self.vocab_size:
            raise ValueError(f"q_len must be in [2, vocab_size={self.vocab_size}], got {self.q_len}")
        if self.d_len < 2 * self.q_len + 1:
            raise ValueError(f"d_len must be >= 2*q_len + 1 = {2 * self.q_len + 1} (room to scatter the query "
                             f"tokens), got {self.d_len}")
        if not (0 <= self.hard_frac and 0 <= self.partial_frac and self.hard_frac + self.partial_frac <= 1):
            raise ValueError(f"hard_frac and partial_frac must be >= 0 with sum <= 1, got {self.hard_frac}, "
                             f"{self.partial_frac}")

    # ------------------------------------------------------------------------------------------- queries
    def _heldout(self, q: np.ndarray) -> np.ndarray:
        h = np.zeros(q.shape[0], dtype=np.int64)
        for i in range(self.q_len):
            h = (h * 1_000_003 + q[:, i] * 7919 + 13) % 2_147_483_647
        return (h % self.heldout_mod) == 0

    def queries(self, rng: np.random.Generator, n: int, heldout: bool) -> np.ndarray:
        """n queries of q_len distinct tokens from the training (or held-out) spans."""
        out = np.empty((0, self.q_len), dtype=np.int64)
        while out.shape[0] < n:
            m = 2 * (n - out.shape[0]) * (self.heldout_mod if heldout else 1) + 8
            q = np.argsort(rng.random((m, self.vocab_size)), axis=1)[:, :self.q_len]
            q = q[self._heldout(q) == heldout]
            out = np.concatenate([out, q])
        return out[:n]

    # ------------------------------------------------------------------------------------------- documents
    def contains_span(self, docs: np.ndarray, q: np.ndarray) -> np.ndarray:
        """docs [..., N, d_len], q [..., q_len] -> [..., N] bool: the span q occurs contiguously in the doc."""
        windows = np.lib.stride_tricks.sliding_window_view(docs, self.q_len, axis=-1)  # [..., N, W, q_len]
        return (windows == q[..., None, None, :]).all(-1).any(-1)

    def _scatter(self, rng: np.random.Generator, docs: np.ndarray, toks: np.ndarray) -> None:
        """Write toks [M, k] into docs [M, d_len] at k random positions, in random order (in place)."""
        m, k = toks.shape
        pos = np.argsort(rng.random((m, self.d_len)), axis=1)[:, :k]
        rows = np.arange(m)[:, None]
        docs[rows, pos] = toks[rows, np.argsort(rng.random((m, k)), axis=1)]

    def candidates(self, rng: np.random.Generator, q: np.ndarray, n_neg: int) -> np.ndarray:
        """[Q, 1 + n_neg, d_len] token ids: the positive first, then the negatives."""
        nq, L, k = q.shape[0], self.d_len, self.q_len
        docs = rng.integers(0, self.vocab_size, size=(nq, 1 + n_neg, L))
        start = rng.integers(0, L - k + 1, size=nq)
        docs[np.arange(nq)[:, None], 0, start[:, None] + np.arange(k)] = q
        n_hard = int(round(self.hard_frac * n_neg))
        n_part = min(int(round(self.partial_frac * n_neg)), n_neg - n_hard)
        for j in range(1, 1 + n_neg):
            kind = "hard" if j <= n_hard else ("partial" if j <= n_hard + n_part else "random")
            self._fill_negative(rng, docs[:, j], q, kind)
        return docs

    def _fill_negative(self, rng: np.random.Generator, docs: np.ndarray, q: np.ndarray, kind: str) -> None:
        todo = np.arange(q.shape[0])
        while todo.size:
            d = rng.integers(0, self.vocab_size, size=(todo.size, self.d_len))
            if kind == "hard":
                half = rng.random(todo.size) < 0.5  # half scattered, half the span reversed in place
                self._scatter(rng, d, q[todo])
                rev = np.flatnonzero(half)
                if rev.size:
                    s = rng.integers(0, self.d_len - self.q_len + 1, size=rev.size)
                    d[rev[:, None], s[:, None] + np.arange(self.q_len)] = q[todo[rev]][:, ::-1]
            elif kind == "partial":
                drop = rng.integers(0, self.q_len, size=todo.size)
                keep = np.stack([np.delete(row, i) for row, i in zip(q[todo], drop)])
                self._scatter(rng, d, keep)
                # the dropped token must not be present at all
                missing = q[todo, drop]
                bad = d == missing[:, None]
                d[bad] = (d[bad] + 1 + rng.integers(0, self.vocab_size - 1, size=int(bad.sum()))) % self.vocab_size
            docs[todo] = d
            ok = ~self.contains_span(docs[todo][:, None, :], q[todo])[:, 0]
            if kind == "partial":
                ok &= ~(docs[todo] == q[todo, drop][:, None]).any(1)
            todo = todo[~ok]

    def batch(self, seed: int, index: int, n_queries: int, n_neg: int, heldout: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries [n_queries, q_len], candidates [n_queries, 1 + n_neg, d_len]) int64, positive first."""
        rng = np.random.default_rng(index_seed(seed, index))
        q = self.queries(rng, n_queries, heldout)
        return torch.from_numpy(q), torch.from_numpy(self.candidates(rng, q, n_neg))
