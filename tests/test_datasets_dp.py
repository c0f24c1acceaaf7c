"""The embedded real data of the DP² experiments: full-IMDB features (Maas et al. 2011) and MovieLens latest-small."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest

from simulations.datasets import imdb, load_imdb, load_movielens
from simulations.datasets.imdb import encode_reviews, load_imdb_reviews, load_imdb_vocab
from simulations.datasets.imdb_features import build_features, tokenize


def test_imdb_has_all_25000_25000_reviews_over_the_10000_most_frequent_training_words():
    d = load_imdb()
    assert d.x_train.shape == (25_000, 10_000) and d.x_test.shape == (25_000, 10_000) and d.dim == 10_000
    assert np.bincount(d.y_train).tolist() == [12_500, 12_500] and np.bincount(d.y_test).tolist() == [12_500, 12_500]
    assert np.allclose(np.asarray(d.x_train.sum(axis=1)).ravel(), 1.0, atol=1e-5)  # L1-normalized counts
    nnz = np.diff(d.x_train.indptr)
    assert 120 < nnz.mean() < 140 and nnz.min() >= 1  # ≈ 129 distinct vocabulary words per review
    vocab = load_imdb_vocab()
    assert len(vocab) == 10_000 and vocab[:4] == ["the", "and", "a", "of"]


def test_imdb_feature_variants():
    binary = load_imdb(features="binary", normalize="none")
    assert set(np.unique(binary.x_train.data)) == {1.0}
    counts = load_imdb(features="count", normalize="none")
    assert counts.x_train.data.max() > 10 and counts.x_train.nnz == binary.x_train.nnz
    l2 = load_imdb(features="binary", normalize="l2")
    norms = np.sqrt(np.asarray(l2.x_train.multiply(l2.x_train).sum(axis=1)).ravel())
    assert np.allclose(norms, 1.0, atol=1e-5)
    small = load_imdb(num_words=500)
    assert small.dim == 500 and np.allclose(np.asarray(small.x_test.sum(axis=1)).ravel()[:100], 1.0, atol=1e-5)


@pytest.mark.parametrize("kw", [{"features": "tfidf"}, {"normalize": "max"}, {"num_words": 10_001},
                                {"num_words": 0}])
def test_imdb_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        load_imdb(**kw)


def test_imdb_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="IMDB features not found"):
        load_imdb(tmp_path)


def test_embedded_imdb_files_match_their_recorded_checksums():
    for name, digest in (("imdb_features.npz", imdb.SHA256),
                         ("vocab.txt", "64358f9d3833e3739e0d98da145514f8fa48436f06251630f3061e0e6c9d18b6")):
        assert hashlib.sha256((imdb.DEFAULT_DIR / name).read_bytes()).hexdigest() == digest
        assert digest in (imdb.DEFAULT_DIR / "SOURCE.md").read_text()


def _write_raw(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        with gzip.open(folder / f"imdb_{split}.jsonl.gz", "wt") as fh:
            for i, (text, label) in enumerate(items):
                fh.write(json.dumps({"id": f"{split}/{i}", "text": text, "label": label, "rating": 1}) + "\n")


def test_build_features_counts_words_of_the_training_vocabulary_only(tmp_path):
    raw = tmp_path / "raw"
    _write_raw(raw, {"train": [("Good good film.<br />Great!", 1), ("Bad film, don't watch", 0)],
                     "test": [("good BAD unseen words", 1)]})
    summary = build_features(raw, tmp_path / "out", vocab_size=4)
    assert summary["vocab_size"] == 4
    vocab = load_imdb_vocab(tmp_path / "out")
    assert vocab == ["film", "good", "bad", "don't"]  # by count, ties by the word
    d = load_imdb(tmp_path / "out", normalize="none", num_words=4)
    assert d.x_train.toarray().tolist() == [[1, 2, 0, 0], [1, 0, 1, 1]]
    assert d.x_test.toarray().tolist() == [[0, 1, 1, 0]] and d.y_train.tolist() == [1, 0]
    ids = encode_reviews(["good film, unseen", ""], vocab, 5)
    assert ids.tolist() == [[3, 2, imdb.UNK, 0, 0], [0, 0, 0, 0, 0]]


def test_tokenize_lowercases_splits_br_tags_and_keeps_apostrophes():
    assert tokenize("It's GREAT.<br /><br />Don't miss it!") == ["it's", "great", "don't", "miss", "it"]


@pytest.mark.skipif(not (imdb.RAW_DIR / "imdb_train.jsonl.gz").is_file(), reason="raw IMDB (../shared/data) absent")
def test_rebuilding_from_the_raw_release_gives_the_embedded_bytes(tmp_path):
    summary = build_features(imdb.RAW_DIR, tmp_path)
    assert summary["sha256"]["imdb_features.npz"] == imdb.SHA256
    texts, labels = load_imdb_reviews("test")
    assert len(texts) == 25_000 and labels.sum() == 12_500


def test_missing_raw_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw IMDB file not found"):
        load_imdb_reviews("train", tmp_path)


def test_movielens_split_covers_all_100836_ratings_and_is_seeded():
    d = load_movielens()
    assert d.n_train + len(d.test_ratings) == 100_836
    assert d.n_users == 610 and d.n_items == 9724
    assert abs(len(d.test_ratings) / 100_836 - 0.2) < 1e-3
    assert d.train_ratings.min() >= 0.5 and d.train_ratings.max() <= 5.0
    again = load_movielens()
    assert np.array_equal(d.test_users, again.test_users) and np.array_equal(d.test_items, again.test_items)
    other = load_movielens(seed=1)
    assert not np.array_equal(d.test_items, other.test_items)


def test_movielens_item_filter_reindexes_densely():
    d = load_movielens(min_item_ratings=50)
    assert d.n_items == 450
    items = np.concatenate([d.train_items, d.test_items])
    assert items.min() == 0 and items.max() == d.n_items - 1
    assert np.bincount(items).min() >= 50


@pytest.mark.parametrize("kw", [{"min_item_ratings": 0}, {"test_fraction": 1.0}, {"test_fraction": 0.0}])
def test_movielens_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        load_movielens(**kw)
