"""Token streams for language modelling: tokenizers, memory-mapped token arrays, random-window batches.

A corpus becomes one flat array of token ids per split, stored as a `.npy` file (uint16 when the vocabulary fits,
else int32) and read back memory-mapped, so a corpus larger than memory trains the same way (as nanoGPT's
`train.bin`). Training batches are random windows: row b of batch i starts at a position drawn from a generator
seeded by (seed, i), so the batch source is step-indexed and a resumed run reads the same windows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import index_seed

EOS = "<eos>"


class CharTokenizer:
    """One id per character, ids in sorted character order (nanoGPT's shakespeare_char: 65 characters)."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = tuple(sorted(set(chars)))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer needs a non-empty set of single characters")
        self._id = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty corpus")
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._id[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: covers any text, round trip exact."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class WordTokenizer:
    """Whitespace-separated words, a line ending as the word `<eos>` (WikiText's word-level convention: the
    tokenized release already splits punctuation and maps rare words to `<unk>`). Ids in order of first use."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(dict.fromkeys(words))
        if not self.words:
            raise ValueError("WordTokenizer needs a non-empty vocabulary")
        self._id = {w: i for i, w in enumerate(self.words)}

    @staticmethod
    def split(text: str) -> list[str]:
        """Words of `text`, with `<eos>` after each line (lines end at "\n" only, as in the files)."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [w for line in lines for w in (*line.split(), EOS)]

    @classmethod
    def from_text(cls, text: str) -> WordTokenizer:
        words = cls.split(text)
        if not words:
            raise ValueError("cannot build a word vocabulary from an empty corpus")
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.asarray([self._id[w] for w in self.split(text)], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"word {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by spaces, `<eos>` as a line break (the inverse of encode up to spacing)."""
        lines, line = [], []
        for i in ids:
            w = self.words[int(i)]
            if w == EOS:
                lines.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(w)
        return "".join(lines) + " ".join(line)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (≤ 65,536 tokens, e.g. GPT-2's 50,257), else int32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def save_tokens(ids: np.ndarray, path: str | os.PathLike, vocab_size: int) -> Path:
    """Write ids as a `.npy` array of `token_dtype(vocab_size)` (atomically) and return its path."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"token ids must be a 1-D array, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, vocab_size={vocab_size}), got [{ids.min()}, {ids.max()}]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, ids.astype(token_dtype(vocab_size)))
    os.replace(tmp, path)
    return path


def load_tokens(path: str | os.PathLike) -> np.ndarray:
    """A token array written by `save_tokens`, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class TokenSplits:
    """A tokenized corpus: train / validation (/ test) token arrays, the vocabulary size, and how many
    characters and words each split holds (for bits per character and word-level perplexity)."""

    name: str
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    test: np.ndarray | None = None
    chars: dict[str, int] | None = None
    words: dict[str, int] | None = None
    tokenizer: Any = None

    def tokens_per_char(self, split: str = "val") -> float:
        """Tokens per character of a split (1 for character-level corpora), for bits per character."""
        if not self.chars:
            raise ValueError(f"{self.name} does not record character counts")
        return len(getattr(self, split)) / self.chars[split]

    def tokens_per_word(self, split: str = "val") -> float:
        """Tokens per word of a split (1 for word-level corpora), for word-level perplexity."""
        if not self.words:
            raise ValueError(f"{self.name} does not record word counts")
        return len(getattr(self, split)) / self.words[split]


def _check_windows(tokens: np.ndarray, block_size: int, what: str) -> int:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    windows = len(tokens) - block_size
    if windows < 1:
        raise ValueError(f"{what} has {len(tokens)} tokens: too short for one window of block_size={block_size} "
                         f"(needs at least {block_size + 1})")
    return windows


class RandomWindows:
    """Step-indexed batches of random windows: batch i is (x, y) [batch_size, block_size] int64, y = x shifted
    by one token, starts drawn uniformly from a generator seeded by (seed, i) (nanoGPT's get_batch, made a pure
    function of i so resume is exact)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0) -> None:
        windows = _check_windows(tokens, block_size, "the corpus")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > windows:
            raise ValueError(f"batch_size={batch_size} cannot be filled: the corpus has only {windows} distinct "
                             f"windows of block_size={block_size}")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self._offsets = np.arange(block_size + 1)

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(index_seed(self.seed, index))
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        rows = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int,
                       max_windows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows covering the split (the last partial one dropped), in batches: every
    token is predicted once, from 0..block_size−1 tokens of context, as in training."""
    _check_windows(tokens, block_size, "the evaluation split")
    n = (len(tokens) - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        starts = np.arange(lo, hi) * block_size
        rows = torch.from_numpy(tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
        yield rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate_loss(model: nn.Module, tokens: np.ndarray, block_size: int, batch_size: int = 64,
                  max_windows: int | None = None, device: str | torch.device = "cpu") -> float:
    """Mean next-token cross-entropy (nats per token) of `model` over `sequential_windows` of `tokens`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in sequential_windows(tokens, block_size, batch_size, max_windows):
        logits = model(x.to(device))
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.to(device).reshape(-1), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / count


def bits_per_char(loss_nats_per_token: float, tokens_per_char: float = 1.0) -> float:
    """Bits per character from a per-token loss in nats (character-level: one token per character)."""
    return loss_nats_per_token * tokens_per_char / math.log(2)


def word_perplexity(loss_nats_per_token: float, tokens_per_word: float = 1.0) -> float:
    """Word-level perplexity exp(loss per word) (word-level tokens: one per word, `<eos>` counted as a word)."""
    return math.exp(loss_nats_per_token * tokens_per_word)
