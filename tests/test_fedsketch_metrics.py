"""Error metrics (count and frequency scale, top-k) and the synthetic instance generator."""

from __future__ import annotations

import numpy as np
import pytest

from fedsketch import l2_error, linf_error, synthetic_instance, tail_norm
from fedsketch.instances import rank_probabilities


def test_errors_on_count_and_frequency_scale_with_top_k():
    truth = np.array([50.0, 30.0, 10.0, 10.0, 0.0])  # N = 100
    est = np.array([48.0, 33.0, 10.0, 4.0, 1.0])
    assert linf_error(est, truth) == 6.0
    assert linf_error(est, truth, scale="frequency") == pytest.approx(0.06)
    assert l2_error(est, truth) == pytest.approx(np.sqrt(4 + 9 + 36 + 1))
    assert linf_error(est, truth, top_k=2) == 3.0  # items 0 and 1
    assert linf_error(est, truth, top_k=3) == 3.0  # ties broken by the smaller id: item 2, not 3
    assert l2_error(est, truth, top_k=2, scale="frequency") == pytest.approx(np.sqrt(13) / 100)


def test_tail_norm():
    c = np.array([5.0, -4.0, 3.0, 0.0, 1.0])
    assert tail_norm(c, 0) == pytest.approx(np.sqrt(51))
    assert tail_norm(c, 1) == pytest.approx(np.sqrt(26))
    assert tail_norm(c, 2) == pytest.approx(np.sqrt(10))
    assert tail_norm(c, 5) == 0.0


def test_metric_bad_input():
    with pytest.raises(ValueError, match="equal shape"):
        linf_error(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="scale must be one of"):
        linf_error(np.zeros(3), np.zeros(3), scale="percent")
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[1, 3\]"):
        l2_error(np.zeros(3), np.zeros(3), top_k=4)
    with pytest.raises(ValueError, match="positive sum"):
        linf_error(np.zeros(3), np.zeros(3), scale="frequency")
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        tail_norm(np.zeros(3), -1)


def test_instances_are_seeded_in_range_and_shaped_per_client():
    a = synthetic_instance("zipf", 1000, 3, 50, 4, seed=7)
    b = synthetic_instance("zipf", 1000, 3, 50, 4, seed=7)
    c = synthetic_instance("zipf", 1000, 3, 50, 4, seed=8)
    assert a.n_rounds == 3 and a.n_items == 600
    for x, y, cl in zip(a.items, b.items, a.clients):
        assert x.dtype == np.int64 and x.shape == (200,) and x.min() >= 0 and x.max() < 1000
        assert np.array_equal(x, y)
        assert np.array_equal(cl, np.repeat(np.arange(50), 4))
    assert not np.array_equal(a.items[0], c.items[0])
    per = a.client_items(1)
    assert len(per) == 50 and all(x.shape == (4,) for x in per)
    assert np.array_equal(np.concatenate(per), a.items[1])
    assert a.counts.sum() == 600 and np.array_equal(a.counts, sum(a.round_counts(t) for t in range(3)))


def test_laws_and_heterogeneous_rounds():
    p = rank_probabilities("zipf", 100, zipf_s=1.0)
    assert p.sum() == pytest.approx(1.0) and p[0] / p[1] == pytest.approx(2.0)
    p = rank_probabilities("near_sparse", 1000, support=10, tail_mass=0.1)
    assert p[:10].sum() == pytest.approx(0.9 + 0.1 * 10 / 1000)
    assert np.allclose(rank_probabilities("uniform", 7), 1 / 7)
    homo = synthetic_instance("zipf", 5000, 4, 2000, zipf_s=1.5, seed=1)
    het = synthetic_instance("zipf", 5000, 4, 2000, zipf_s=1.5, heterogeneous=True, seed=1)
    assert {int(np.argmax(homo.round_counts(t))) for t in range(4)} == {0}
    assert len({int(np.argmax(het.round_counts(t))) for t in range(4)}) == 4
    with pytest.raises(ValueError, match="kind must be one of"):
        synthetic_instance("pareto", 10, 1, 1)
    with pytest.raises(ValueError, match=r"n_rounds must be an integer in \[1"):
        synthetic_instance("zipf", 10, 0, 1)
    with pytest.raises(ValueError, match=r"support must be in \[1, 10\]"):
        rank_probabilities("near_sparse", 10, support=11)
