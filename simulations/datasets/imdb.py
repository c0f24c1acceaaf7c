"""IMDB movie-review sentiment (Maas et al., 2011) as bag-of-words features for DP logistic regression.

The embedded file `simulations/data/imdb/imdb_subset.npz` is a 5,000/1,000-review subset of Keras' `imdb.npz`
(word ids ranked by corpus frequency; 0 = padding, 1 = start, 2 = out-of-vocabulary, real words from 3 on).
It was cut at ``num_words=500``: every id is < 500, so the feature space has 500 columns, not the 10,000 of the
DP² paper's IMDB features — the experiments report this, since it changes how much an adaptive preconditioner
can help (few, frequent features).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "imdb" / "imdb_subset.npz"
SHA256 = "501999b1bee9ca01b59f91ffb7af227d0b98543b78bb4c4162dac96e600f18d4"
FEATURES = ("binary", "count", "tfidf")
_FIRST_WORD = 3  # Keras' index_from: ids 0..2 are padding, start and out-of-vocabulary markers


@dataclass(frozen=True)
class ImdbData:
    """Dense float32 feature matrices (rows = reviews) with 0/1 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: str
    normalize: bool

    @property
    def dim(self) -> int:
        """Number of feature columns."""
        return int(self.x_train.shape[1])


@lru_cache(maxsize=2)
def _raw(path: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IMDB subset not found at {p}; pass path= to a copy of imdb_subset.npz")
    blob = p.read_bytes()
    # The file stores ragged id lists as pickled object arrays: the embedded copy is checked against its
    # recorded checksum before anything is unpickled (a user-supplied path is trusted by the user).
    if path == str(DEFAULT_PATH) and hashlib.sha256(blob).hexdigest() != SHA256:
        raise ValueError(f"{p} does not match the recorded sha256 {SHA256}; the embedded data was modified")
    with np.load(p, allow_pickle=True) as z:
        xtr = tuple(np.asarray(r, dtype=np.int64) for r in z["arr_0"])
        xte = tuple(np.asarray(r, dtype=np.int64) for r in z["arr_2"])
        return xtr, xte, np.asarray(z["arr_1"], dtype=np.int64), np.asarray(z["arr_3"], dtype=np.int64)


def _bag(reviews: tuple[np.ndarray, ...], dim: int) -> np.ndarray:
    """Word-count matrix (n × dim) over ids 3..dim+2, built with one bincount (no loop over words)."""
    lengths = np.array([len(r) for r in reviews])
    ids = np.concatenate(reviews) if reviews else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(reviews)), lengths)
    keep = (ids >= _FIRST_WORD) & (ids < _FIRST_WORD + dim)
    flat = rows[keep] * dim + (ids[keep] - _FIRST_WORD)
    return np.bincount(flat, minlength=len(reviews) * dim).reshape(len(reviews), dim).astype(np.float32)


def load_imdb(
    path: str | Path | None = None,
    *,
    features: Literal["binary", "count", "tfidf"] = "binary",
    normalize: bool = False,
    num_words: int = 500,
) -> ImdbData:
    """Load the embedded IMDB subset as bag-of-words features.

    features: "binary" (word present), "count" (occurrences) or "tfidf" (log(1+count) · idf, idf from the
    training reviews). normalize=True scales each row to unit L2 norm (so every per-example gradient of a
    logistic loss has norm <= 1 before clipping). num_words: keep word ids below it (3..num_words-1); at most 500,
    the cut of the embedded subset.
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if not 4 <= num_words <= 500:
        raise ValueError(f"num_words must be in [4, 500] (the subset keeps ids < 500), got {num_words}")
    xtr_ids, xte_ids, ytr, yte = _raw(str(Path(path) if path is not None else DEFAULT_PATH))
    dim = num_words - _FIRST_WORD
    xtr, xte = _bag(xtr_ids, dim), _bag(xte_ids, dim)
    if features == "binary":
        xtr, xte = (xtr > 0).astype(np.float32), (xte > 0).astype(np.float32)
    elif features == "tfidf":
        df = (xtr > 0).sum(axis=0)
        idf = np.log((1.0 + len(xtr)) / (1.0 + df)) + 1.0
        xtr = (np.log1p(xtr) * idf).astype(np.float32)
        xte = (np.log1p(xte) * idf).astype(np.float32)
    if normalize:
        xtr = xtr / np.maximum(np.linalg.norm(xtr, axis=1, keepdims=True), 1e-12)
        xte = xte / np.maximum(np.linalg.norm(xte, axis=1, keepdims=True), 1e-12)
    return ImdbData(xtr.astype(np.float32), ytr, xte.astype(np.float32), yte, features, normalize)
