"""The embedded Tiny Shakespeare corpus as federated clients."""

import numpy as np
import pytest

from simulations.datasets import load_shakespeare


def test_roles_are_clients_and_ids_are_frequency_ranked():
    c = load_shakespeare()
    assert c.n_clients == 299 and c.d == 12349 and len(c.speeches) == 7097
    counts = c.counts
    assert counts.sum() == sum(len(x) for x in c.client_items) == 194012
    assert np.all(np.diff(counts) <= 0), "ids must be ranked by global frequency"
    assert c.vocab[0] == "the"
    items, index = c.items_and_index()
    assert len(items) == len(index) and index.max() == c.n_clients - 1
    assert all(x.dtype == np.int64 for x in c.client_items)


def test_min_items_filters_roles_and_validates():
    c = load_shakespeare(min_items=100)
    assert all(len(x) >= 100 for x in c.client_items) and 0 < c.n_clients < 299
    with pytest.raises(ValueError, match="min_items"):
        load_shakespeare(min_items=0)
    with pytest.raises(FileNotFoundError, match="Tiny Shakespeare"):
        load_shakespeare(path="/nonexistent/input.txt")
