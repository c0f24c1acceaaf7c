"""The embedded real data of the DP² experiments: IMDB subset (Maas et al. 2011) and MovieLens latest-small."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.datasets import load_imdb, load_movielens


def test_imdb_subset_has_5000_train_1000_test_reviews_over_497_word_features():
    d = load_imdb()
    assert d.x_train.shape == (5000, 497) and d.x_test.shape == (1000, 497)
    assert set(np.unique(d.y_train)) == {0, 1} and set(np.unique(d.x_train)) == {0.0, 1.0}
    assert 0.45 < d.y_train.mean() < 0.55
    # a review uses ~78 distinct words of the 497 in the vocabulary (ids 3..499)
    assert 60 < (d.x_train > 0).sum(1).mean() < 100


def test_imdb_feature_variants_and_unit_normalization():
    counts = load_imdb(features="count")
    assert counts.x_train.max() > 1  # repeated words are counted
    tfidf = load_imdb(features="tfidf", normalize=True)
    norms = np.linalg.norm(tfidf.x_train, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    small = load_imdb(num_words=100)
    assert small.dim == 97


@pytest.mark.parametrize("kw", [{"features": "words"}, {"num_words": 501}, {"num_words": 3}])
def test_imdb_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        load_imdb(**kw)


def test_imdb_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="IMDB subset not found"):
        load_imdb(tmp_path / "nope.npz")


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
