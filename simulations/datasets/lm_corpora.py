"""Language-modelling corpora as token arrays: Tiny Shakespeare (characters), WikiText-2 (words), a folder of
`.txt` files (characters or bytes).

Each loader tokenizes once, writes the splits as memory-mapped `.npy` token arrays in a cache folder (keyed by
the text's checksum and the tokenizer), and returns `models.lm.TokenSplits` holding the mapped arrays.
- Tiny Shakespeare at character level exactly as nanoGPT's `shakespeare_char`: the 65 characters of the whole
  text, sorted; the first 90% of characters train, the last 10% validate.
- WikiText-2: the published train / valid / test files (embedded gzipped under `simulations/data/wikitext-2/`,
  with their CC BY-SA licence), words split on whitespace with `<eos>` per line, the vocabulary of train.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from models.lm import ByteTokenizer, CharTokenizer, TokenSplits, WordTokenizer, load_tokens, save_tokens

DATA = Path(__file__).resolve().parent.parent / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
WIKITEXT2 = DATA / "wikitext-2"
WIKITEXT2_SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
_TOKENIZERS = ("char", "byte")


def cache_dir() -> Path:
    """Where token arrays are kept: $FEDPRIVACY_CACHE/lm, else the system temp folder."""
    root = os.environ.get("FEDPRIVACY_CACHE") or os.path.join(tempfile.gettempdir(), "fedprivacy-cache")
    return Path(root) / "lm"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cached(key: str, splits: dict[str, str], encode, vocab_size: int) -> dict[str, np.ndarray]:
    """Token arrays of each split, encoded once and then read memory-mapped from the cache."""
    folder = cache_dir() / key
    out = {}
    for name, text in splits.items():
        path = folder / f"{name}.npy"
        if not path.exists():
            save_tokens(encode(text), path, vocab_size)
        out[name] = load_tokens(path)
    return out


def _check_split_text(name: str, text: str) -> None:
    if not text.strip():
        raise ValueError(f"the {name} split is empty")


def load_shakespeare_char(path: str | Path | None = None, val_fraction: float = 0.1) -> TokenSplits:
    """Tiny Shakespeare at character level (nanoGPT's shakespeare_char: 65 characters, 1,003,854 train and
    111,540 validation tokens at val_fraction=0.1). path: another copy of `input.txt`."""
    p = Path(path) if path is not None else SHAKESPEARE
    if not p.is_file():
        raise FileNotFoundError(f"Tiny Shakespeare not found at {p}")
    return _char_splits("shakespeare_char", p.read_text(encoding="utf-8"), val_fraction, "char")


def load_text_dir(path: str | Path, tokenizer: str = "char", val_fraction: float = 0.1) -> TokenSplits:
    """Every `*.txt` file under `path` (recursively, in sorted order, joined by newlines) as one corpus: the last
    val_fraction of it validates. tokenizer 'char' (the corpus's characters) or 'byte' (UTF-8 bytes, 256 ids)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"text folder not found: {root}")
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise ValueError(f"no .txt files under {root}")
    text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    return _char_splits(root.name or "text", text, val_fraction, tokenizer)


def _char_splits(name: str, text: str, val_fraction: float, tokenizer: str) -> TokenSplits:
    if tokenizer not in _TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not text.strip():
        raise ValueError(f"the corpus {name!r} is empty")
    tok = CharTokenizer.from_text(text) if tokenizer == "char" else ByteTokenizer()
    if tokenizer == "byte":
        data = text.encode("utf-8")
        cut = int(len(data) * (1 - val_fraction))
        parts = {"train": data[:cut].decode("utf-8", "ignore"), "val": data[cut:].decode("utf-8", "ignore")}
    else:
        cut = int(len(text) * (1 - val_fraction))
        parts = {"train": text[:cut], "val": text[cut:]}
    for split, part in parts.items():
        if len(part) < 2:
            raise ValueError(f"the corpus {name!r} is too short: its {split} split has {len(part)} characters")
    arrays = _cached(f"{name}-{tokenizer}-{val_fraction}-{_sha(text)[:16]}", parts, tok.encode, tok.vocab_size)
    return TokenSplits(name=name, train=arrays["train"], val=arrays["val"], vocab_size=tok.vocab_size,
                       chars={k: len(v) for k, v in parts.items()}, tokenizer=tok)


def load_wikitext2(path: str | Path | None = None, verify: bool = True) -> TokenSplits:
    """WikiText-2 (word level): train / val / test token arrays over the 33,278-word vocabulary of train.
    path: a folder with `wiki.{train,valid,test}.tokens` (plain or `.gz`); default the embedded copy. verify
    checks each file's sha256 against the published release."""
    root = Path(path) if path is not None else WIKITEXT2
    texts = {}
    for split in ("train", "valid", "test"):
        plain, packed = root / f"wiki.{split}.tokens", root / f"wiki.{split}.tokens.gz"
        if plain.is_file():
            raw = plain.read_bytes()
        elif packed.is_file():
            raw = gzip.decompress(packed.read_bytes())
        else:
            raise FileNotFoundError(f"WikiText-2 {split} split not found at {plain} (or {packed.name})")
        if verify and hashlib.sha256(raw).hexdigest() != WIKITEXT2_SHA256[split]:
            raise ValueError(f"{plain} is not the published WikiText-2 file (sha256 differs); pass verify=False "
                             "to use it anyway")
        texts[split] = raw.decode("utf-8")
        _check_split_text(split, texts[split])
    tok = WordTokenizer.from_text(texts["train"])
    arrays = _cached(f"wikitext2-{_sha(texts['train'] + texts['valid'] + texts['test'])[:16]}", texts, tok.encode,
                     tok.vocab_size)
    words = {k: len(v) for k, v in arrays.items()}
    return TokenSplits(name="wikitext2", train=arrays["train"], val=arrays["valid"], test=arrays["test"],
                       vocab_size=tok.vocab_size, words={"train": words["train"], "val": words["valid"],
                                                         "test": words["test"]}, tokenizer=tok)
