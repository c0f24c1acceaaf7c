"""Tiny Shakespeare as federated data: each speaking role is a client, its items the words it speaks.

The text (public domain, from karpathy/char-rnn) is embedded at `simulations/data/tinyshakespeare/input.txt`.
Word ids are ranked by global frequency (id 0 is the most frequent word), so the global count vector is
sorted and heavy-tailed — a real Zipf-like instance for frequency estimation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare" / "input.txt"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_SPEAKER = re.compile(r"^([A-Z][A-Za-z .,'&\-]*[A-Za-z.]):\s*$")


@dataclass(frozen=True)
class ShakespeareCorpus:
    """Speeches grouped by speaking role, with words mapped to frequency-ranked integer ids."""

    roles: tuple[str, ...]
    """One name per client, in order of first appearance."""
    vocab: tuple[str, ...]
    """`vocab[i]` is the word with id i; ids are ranked by global frequency (ties alphabetical)."""
    client_items: tuple[np.ndarray, ...]
    """`client_items[c]` holds the int64 word ids that role c speaks, in order."""
    speeches: tuple[tuple[int, str], ...]
    """(role index, speech text) in reading order, for language modelling."""

    @property
    def d(self) -> int:
        """Domain size: the number of distinct words."""
        return len(self.vocab)

    @property
    def n_clients(self) -> int:
        return len(self.roles)

    @property
    def counts(self) -> np.ndarray:
        """Global count of each word id (the true frequency vector, unnormalized)."""
        return np.bincount(np.concatenate(self.client_items), minlength=self.d).astype(np.int64)

    def items_and_index(self) -> tuple[np.ndarray, np.ndarray]:
        """All items concatenated and, beside them, the client index of each (for vectorized per-client work)."""
        items = np.concatenate(self.client_items)
        index = np.repeat(np.arange(self.n_clients), [len(c) for c in self.client_items])
        return items, index


def _parse(text: str) -> list[tuple[str, str]]:
    """Split the play text into (speaker, speech) pairs; a speech runs until the next blank line."""
    speeches = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        m = _SPEAKER.match(lines[0].strip()) if lines else None
        if m and len(lines) > 1:
            speeches.append((m.group(1).strip(), "\n".join(lines[1:])))
    return speeches


@lru_cache(maxsize=4)
def _load(path: str) -> ShakespeareCorpus:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"Tiny Shakespeare not found at {p}; pass path= to a copy of karpathy/char-rnn's "
            "data/tinyshakespeare/input.txt"
        )
    speeches = _parse(p.read_text(encoding="utf-8"))
    role_index: dict[str, int] = {}
    words_per_speech = []
    for speaker, speech in speeches:
        role_index.setdefault(speaker, len(role_index))
        words_per_speech.append(_WORD.findall(speech.lower()))
    freq = Counter(w for ws in words_per_speech for w in ws)
    vocab = tuple(sorted(freq, key=lambda w: (-freq[w], w)))
    word_id = {w: i for i, w in enumerate(vocab)}
    per_role: list[list[int]] = [[] for _ in role_index]
    for (speaker, _), ws in zip(speeches, words_per_speech):
        per_role[role_index[speaker]].extend(word_id[w] for w in ws)
    return ShakespeareCorpus(
        roles=tuple(role_index),
        vocab=vocab,
        client_items=tuple(np.asarray(r, dtype=np.int64) for r in per_role),
        speeches=tuple((role_index[s], t) for s, t in speeches),
    )


def load_shakespeare(path: str | Path | None = None, min_items: int = 1) -> ShakespeareCorpus:
    """Load Tiny Shakespeare as clients (speaking roles) holding word ids.

    Args:
        path: the `input.txt` file; defaults to the embedded copy.
        min_items: keep only roles that speak at least this many words (>= 1).
    """
    if min_items < 1:
        raise ValueError(f"min_items must be >= 1, got {min_items}")
    corpus = _load(str(Path(path) if path is not None else DEFAULT_PATH))
    if min_items == 1:
        return corpus
    keep = [i for i, c in enumerate(corpus.client_items) if len(c) >= min_items]
    remap = {old: new for new, old in enumerate(keep)}
    return ShakespeareCorpus(
        roles=tuple(corpus.roles[i] for i in keep),
        vocab=corpus.vocab,
        client_items=tuple(corpus.client_items[i] for i in keep),
        speeches=tuple((remap[r], t) for r, t in corpus.speeches if r in remap),
    )
