"""IMDB movie-review sentiment (Maas et al., 2011): the DP² paper's bag-of-words features, and review tokens.

The embedded ``simulations/data/imdb/imdb_features.npz`` holds all 25,000 / 25,000 reviews as sparse word counts
over the 10,000 most frequent training-set words (CSR rows, ``uint16`` column indices and counts), with
``vocab.txt`` beside it; ``simulations.datasets.imdb_features`` builds both from the raw release. The DP² paper
(Li et al., ICLR 2023) trains logistic regression on 10,000-dimensional IMDB features; which normalization its
numbers need is measured in docs/results-dpopt.md: L1-normalized counts (term frequencies, each row sums to 1),
the default here.

The raw review text (for token models) is not embedded; :func:`load_imdb_reviews` reads it from the raw folder
(``../shared/data/imdb-full`` beside the checkout by default) and fails clearly when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from simulations.datasets.imdb_features import FEATURES_FILE, VOCAB_FILE, read_reviews, tokenize

__all__ = ["ImdbData", "load_imdb", "load_imdb_vocab", "load_imdb_reviews", "encode_reviews", "DEFAULT_DIR",
           "RAW_DIR", "FEATURES", "NORMALIZE", "PAD", "UNK"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "imdb"
RAW_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "imdb-full"
SHA256 = "e16086e2477b47dce7a31f55d056bb5e762fddd6d53c53b6d62b6778468a75f0"
FEATURES = ("count", "binary")
NORMALIZE = ("none", "l1", "l2")
PAD, UNK = 0, 1  # token ids of encode_reviews; word j of the vocabulary is token j + 2


@dataclass(frozen=True)
class ImdbData:
    """Sparse float32 feature rows (``scipy.sparse.csr_matrix``, one per review) with 0/1 labels."""

    x_train: sp.csr_matrix
    y_train: np.ndarray
    x_test: sp.csr_matrix
    y_test: np.ndarray
    features: str
    normalize: str

    @property
    def dim(self) -> int:
        """Number of feature columns (the vocabulary size)."""
        return int(self.x_train.shape[1])


@lru_cache(maxsize=2)
def _arrays(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"IMDB features not found at {p}; rebuild them with `python -m simulations.datasets.imdb_features "
            "RAW_DIR` or pass path= to a folder holding imdb_features.npz"
        )
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_imdb_vocab(path: str | Path | None = None) -> list[str]:
    """The vocabulary in column order (most frequent training word first)."""
    folder = Path(path) if path is not None else DEFAULT_DIR
    lines = (folder / VOCAB_FILE).read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[0] for line in lines]


def _split(z: dict[str, np.ndarray], split: str, num_words: int, features: str, normalize: str) -> sp.csr_matrix:
    vocab = int(z["vocab_size"])
    values = z[f"{split}_counts"].astype(np.float32)
    if features == "binary":
        values = np.ones_like(values)
    m = sp.csr_matrix((values, z[f"{split}_indices"].astype(np.int32), z[f"{split}_indptr"]),
                      shape=(len(z[f"{split}_labels"]), vocab))
    if num_words < vocab:
        m = m[:, :num_words].tocsr()
    if normalize != "none":
        row = np.asarray(abs(m).sum(axis=1) if normalize == "l1" else np.sqrt(m.multiply(m).sum(axis=1))).ravel()
        m = sp.diags(1.0 / np.maximum(row, 1e-12).astype(np.float32)) @ m
    m = m.astype(np.float32).tocsr()
    m.sort_indices()
    return m


def load_imdb(
    path: str | Path | None = None,
    *,
    features: str = "count",
    normalize: str = "l1",
    num_words: int = 10_000,
) -> ImdbData:
    """All 25,000 / 25,000 IMDB reviews as bag-of-words rows over the ``num_words`` most frequent training words.

    features: "count" (occurrences) or "binary" (word present); normalize: "l1" (each row sums to 1: term
    frequencies, the default), "l2" (unit Euclidean norm) or "none". path: a folder holding imdb_features.npz.
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if isinstance(num_words, bool) or not isinstance(num_words, int | np.integer) or not 1 <= num_words <= 10_000:
        raise ValueError(f"num_words must be an integer in [1, 10000] (the embedded vocabulary), got {num_words!r}")
    folder = Path(path) if path is not None else DEFAULT_DIR
    z = _arrays(str(folder / FEATURES_FILE))
    return ImdbData(
        _split(z, "train", int(num_words), features, normalize), z["train_labels"].astype(np.int64),
        _split(z, "test", int(num_words), features, normalize), z["test_labels"].astype(np.int64),
        features, normalize,
    )


def load_imdb_reviews(split: str, raw_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """(raw review texts, 0/1 labels) of ``split`` from the raw release (``RAW_DIR`` by default)."""
    return read_reviews(RAW_DIR if raw_dir is None else raw_dir, split)


def encode_reviews(texts: list[str], vocab: list[str], max_len: int) -> np.ndarray:
    """Token ids (n × max_len, int64) of each review's first ``max_len`` words: word j of ``vocab`` is j + 2,
    out-of-vocabulary words are UNK (1), short reviews are padded with PAD (0) at the end."""
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    index = {w: i + 2 for i, w in enumerate(vocab)}
    out = np.zeros((len(texts), int(max_len)), dtype=np.int64)
    for r, text in enumerate(texts):
        ids = [index.get(w, UNK) for w in tokenize(text)[: int(max_len)]]
        out[r, : len(ids)] = ids
    return out
