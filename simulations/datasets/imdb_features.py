"""Build the embedded IMDB bag-of-words features from the raw Large Movie Review Dataset (Maas et al., 2011).

The DP² paper (Li et al., ICLR 2023) trains logistic regression on 25,000 / 25,000 IMDB reviews represented by
the 10,000 most frequent training-set words. This module makes those features from the raw review text and
writes them compactly (sparse CSR rows, ``uint16`` column indices and counts, one compressed ``.npz``), with the
vocabulary beside them; ``simulations.datasets.imdb`` loads them. Run once, when the raw data changes::

    python -m simulations.datasets.imdb_features ../shared/data/imdb-full --out simulations/data/imdb

Tokenization (also used for the transformer's review tokens): lower-case, the release's ``<br />`` tags as
spaces, then words ``[a-z0-9]+`` with an optional ``'suffix`` ("don't", "film's"); no stemming or stop words.
The vocabulary is ranked by training-set count (ties by the word), so column j is the (j+1)-th most frequent
training word: only the training split decides the features (the test split is only encoded).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["tokenize", "read_reviews", "build_vocabulary", "encode_bag", "build_features", "FEATURES_FILE",
           "VOCAB_FILE"]

FEATURES_FILE = "imdb_features.npz"
VOCAB_FILE = "vocab.txt"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """The words of one review (see the module docstring for the rule)."""
    return _TOKEN.findall(text.replace("<br />", " ").lower())


def read_reviews(raw_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """(texts, 0/1 labels) of ``imdb_{split}.jsonl.gz`` in ``raw_dir``, in file order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(raw_dir) / f"imdb_{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"raw IMDB file not found: {path}. Pass the folder holding imdb_train.jsonl.gz and imdb_test.jsonl.gz "
            "(the project keeps it at ../shared/data/imdb-full/)"
        )
    texts, labels = [], []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(int(row["label"]))
    return texts, np.asarray(labels, dtype=np.uint8)


def build_vocabulary(token_lists: Iterable[Sequence[str]], size: int = 10_000) -> tuple[list[str], list[int]]:
    """The ``size`` most frequent words (by total count, ties by the word) and their counts."""
    if not 1 <= size <= 65_535:
        raise ValueError(f"size must be in [1, 65535] (uint16 column indices), got {size}")
    counts = collections.Counter(w for toks in token_lists for w in toks)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return [w for w, _ in ranked], [c for _, c in ranked]


def encode_bag(token_lists: Sequence[Sequence[str]], vocab: Sequence[str]) -> tuple[np.ndarray, ...]:
    """CSR rows of word counts over ``vocab``: (indptr int64, indices uint16 sorted per row, counts uint16)."""
    index = {w: i for i, w in enumerate(vocab)}
    indptr = np.zeros(len(token_lists) + 1, dtype=np.int64)
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for r, toks in enumerate(token_lists):
        ids = np.fromiter((index[w] for w in toks if w in index), dtype=np.int64)
        u, c = np.unique(ids, return_counts=True)
        cols.append(u)
        vals.append(np.minimum(c, 65_535))
        indptr[r + 1] = indptr[r] + len(u)
    indices = np.concatenate(cols).astype(np.uint16) if cols else np.zeros(0, np.uint16)
    counts = np.concatenate(vals).astype(np.uint16) if vals else np.zeros(0, np.uint16)
    return indptr, indices, counts


def build_features(raw_dir: str | Path, out_dir: str | Path, vocab_size: int = 10_000) -> dict[str, object]:
    """Write ``imdb_features.npz`` and ``vocab.txt`` to ``out_dir``; return a summary (sizes, sha256s)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr_text, tr_y = read_reviews(raw_dir, "train")
    te_text, te_y = read_reviews(raw_dir, "test")
    tr_tok = [tokenize(t) for t in tr_text]
    te_tok = [tokenize(t) for t in te_text]
    vocab, counts = build_vocabulary(tr_tok, vocab_size)
    arrays: dict[str, np.ndarray] = {}
    for split, toks, y in (("train", tr_tok, tr_y), ("test", te_tok, te_y)):
        indptr, indices, vals = encode_bag(toks, vocab)
        arrays.update({f"{split}_indptr": indptr, f"{split}_indices": indices, f"{split}_counts": vals,
                       f"{split}_labels": y})
    arrays["vocab_size"] = np.asarray(len(vocab), dtype=np.int64)
    np.savez_compressed(out / FEATURES_FILE, **arrays)
    (out / VOCAB_FILE).write_text("".join(f"{w}\t{c}\n" for w, c in zip(vocab, counts)), encoding="utf-8")
    digest = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in (FEATURES_FILE, VOCAB_FILE)}
    return {
        "n_train": len(tr_y), "n_test": len(te_y), "vocab_size": len(vocab),
        "nnz_train": int(arrays["train_indptr"][-1]), "nnz_test": int(arrays["test_indptr"][-1]),
        "bytes": {name: (out / name).stat().st_size for name in digest}, "sha256": digest,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the features from a raw folder (exit 2 with a message if it is missing)."""
    ap = argparse.ArgumentParser(prog="python -m simulations.datasets.imdb_features", description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_dir", help="folder with imdb_train.jsonl.gz and imdb_test.jsonl.gz")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "imdb"))
    ap.add_argument("--vocab-size", type=int, default=10_000)
    args = ap.parse_args(argv)
    try:
        summary = build_features(args.raw_dir, args.out, args.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        ap.error(str(err))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
