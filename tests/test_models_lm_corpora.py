"""The LM corpora (simulations.datasets.lm_corpora): split sizes and vocabularies equal the published ones."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.datasets import load_shakespeare_char, load_text_dir, load_wikitext2


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDPRIVACY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_shakespeare_char_is_nanogpts_split():
    s = load_shakespeare_char()
    assert s.vocab_size == 65 and (len(s.train), len(s.val)) == (1_003_854, 111_540)
    assert isinstance(s.train, np.memmap) and s.train.dtype == np.uint16
    assert s.tokenizer.decode(s.train[:14]) == "First Citizen:"
    assert s.tokens_per_char("val") == 1.0


def test_wikitext2_has_the_published_counts():
    w = load_wikitext2()
    assert w.vocab_size == 33_278
    assert (len(w.train), len(w.val), len(w.test)) == (2_088_628, 217_646, 245_569)
    assert w.tokens_per_word("test") == 1.0
    assert w.tokenizer.decode(w.val[:6]).split() == ["=", "Homarus", "gammarus", "="]


def test_wikitext2_refuses_a_file_that_is_not_the_release(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"wiki.{split}.tokens").write_text("a b c\n")
    with pytest.raises(ValueError, match="sha256"):
        load_wikitext2(tmp_path)
    assert load_wikitext2(tmp_path, verify=False).vocab_size == 4  # a, b, c, <eos>
    with pytest.raises(FileNotFoundError, match="valid"):
        (tmp_path / "wiki.valid.tokens").unlink()
        load_wikitext2(tmp_path, verify=False)


def test_a_folder_of_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("ünïcode\n" * 20)
    c = load_text_dir(tmp_path)
    assert c.tokenizer.decode(c.train[:5]) == "hello"
    b = load_text_dir(tmp_path, tokenizer="byte")
    assert b.vocab_size == 256 and len(b.train) + len(b.val) > len(c.train) + len(c.val)


def test_empty_or_missing_text_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_text_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="no .txt"):
        load_text_dir(tmp_path)
    (tmp_path / "a.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_text_dir(tmp_path)
    (tmp_path / "a.txt").write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        load_text_dir(tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        load_text_dir(tmp_path, tokenizer="bpe")
