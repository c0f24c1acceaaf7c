"""Contribution bounding: what one client may put into a round's sketch, so that its sensitivity holds for every input.

Frequency estimation as a user-level statistic counts each client at most once per item (TFF's heavy hitters
without ``multi_contribution``). With ``contribution="distinct"`` a client

1. keeps at most m *distinct* items (`distinct_items`: its m most frequent ones, ties broken by the smaller id:
   a deterministic function of its own data, so it needs no randomness and costs no privacy), and
2. encodes them and bounds every cell of its table to [-1, 1] (`bound_cells`). Distinct items can still collide
   in a bucket (two items with the same sign make a cell of 2); clipping keeps the table integer.

Each row then holds at most m unit cells, so ``l1 <= m R`` and ``l2 <= sqrt(m R)`` whatever the client's data:
the sensitivity `fedsketch.privacy.sketch_sensitivity(R, m, contribution="distinct")` holds by construction.
The price is a bias: a same-sign collision of two of one client's items loses one count in that row (probability
about (m - 1) / (2 W) per item and row). The count-median decoder mostly ignores it, because a loss hits one row
at a time; `ffe-flower` measures it on its data.

``contribution="occurrences"`` keeps up to m occurrences (`fedsketch.privacy.cap_items`) and no cell bound; its
sensitivity is the worst case ``Delta2 = m sqrt(R)`` of m copies of one item.

`bounded_tables` gives every client's table (for masking and per-client noise); `bounded_sum` gives the sum of the
same tables without materializing them (linearity within each (client, row, bucket) cell: only cells shared by two
of one client's items need the clip), for fast simulations of large cohorts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from fedsketch.privacy import CONTRIBUTIONS, CappedItems, cap_items
from fedsketch.sketch import CountSketch

__all__ = ["CONTRIBUTIONS", "distinct_items", "bound_items", "bound_cells", "bounded_tables", "bounded_sum",
           "check_contribution"]


def _check_cap(cap: object) -> int:
    if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or int(cap) < 1:
        raise ValueError(f"cap must be an integer >= 1, got {cap!r}")
    return int(cap)


def _check_contribution(contribution: str) -> str:
    if contribution not in CONTRIBUTIONS:
        raise ValueError(f"contribution must be one of {CONTRIBUTIONS}, got {contribution!r}")
    return contribution


def _items_and_clients(items: ArrayLike, client_index: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    it = np.asarray(items)
    if it.ndim != 1:
        raise ValueError(f"items must be 1-D, got shape {it.shape}")
    if it.size and (not np.issubdtype(it.dtype, np.integer) or int(it.min()) < 0):
        raise ValueError(f"items must be non-negative integer ids, got dtype {it.dtype}")
    ci = np.zeros(len(it), dtype=np.int64) if client_index is None else np.asarray(client_index)
    if ci.shape != it.shape:
        raise ValueError(f"client_index must have the shape of items {it.shape}, got {ci.shape}")
    if ci.size and (not np.issubdtype(ci.dtype, np.integer) or int(ci.min()) < 0):
        raise ValueError(f"client_index must hold non-negative integer client numbers, got dtype {ci.dtype}")
    return it.astype(np.int64, copy=False), ci.astype(np.int64, copy=False)


def distinct_items(items: ArrayLike, client_index: ArrayLike | None = None, *, cap: int) -> CappedItems:
    """Each client's at most ``cap`` distinct items: its most frequent ones, ties broken by the smaller id.

    Output sorted by (client, item), one entry per kept (client, item) pair. ``n_dropped`` counts the occurrences
    not encoded (repeats and items beyond the cap), ``n_clients_capped`` the clients with more than ``cap``
    distinct items. One sort of the pairs; a second one only when some client is over the cap.
    """
    cap = _check_cap(cap)
    it, ci = _items_and_clients(items, client_index)
    n = it.shape[0]
    if n == 0:
        return CappedItems(it, ci, 0, 0)
    top = int(it.max()) + 1
    if int(ci.max()) < (1 << 62) // top:  # one int64 key (client, item): a single sort
        key = np.sort(ci * top + it)
        first = np.r_[True, key[1:] != key[:-1]]
        starts = np.flatnonzero(first)
        pc, pi = key[starts] // top, key[starts] % top
    else:
        order = np.lexsort((it, ci))
        cs, its = ci[order], it[order]
        starts = np.flatnonzero(np.r_[True, (cs[1:] != cs[:-1]) | (its[1:] != its[:-1])])
        pc, pi = cs[starts], its[starts]
    counts = np.diff(np.r_[starts, n])
    cstart = np.flatnonzero(np.r_[True, pc[1:] != pc[:-1]])
    sizes = np.diff(np.r_[cstart, pc.shape[0]])
    if int(sizes.max()) <= cap:
        return CappedItems(pi, pc, int(n - pi.shape[0]), 0)
    order = np.lexsort((pi, -counts, pc))  # by client, then most frequent first, then smaller id
    rank = np.arange(pc.shape[0]) - np.repeat(cstart, sizes)  # pc is grouped, so the client blocks are unchanged
    keep = np.sort(order[rank < cap])
    return CappedItems(pi[keep], pc[keep], int(n - keep.shape[0]), int((sizes > cap).sum()))


def bound_items(
    items: ArrayLike,
    client_index: ArrayLike | None = None,
    *,
    cap: int,
    contribution: str = "distinct",
    seed: int | np.random.Generator | None = None,
) -> CappedItems:
    """The items each client encodes: `distinct_items` or, for ``"occurrences"``, `cap_items` (needs ``seed``)."""
    if _check_contribution(contribution) == "distinct":
        return distinct_items(items, client_index, cap=cap)
    if seed is None:
        raise ValueError("seed is required for contribution='occurrences' (cap_items subsamples occurrences)")
    return cap_items(np.asarray(items), None if client_index is None else np.asarray(client_index), cap=cap,
                     seed=seed)


def bound_cells(tables: np.ndarray) -> np.ndarray:
    """Clip every cell to [-1, 1] in place (integer tables stay integer) and return the array."""
    if not np.issubdtype(tables.dtype, np.signedinteger):
        raise ValueError(f"tables must have a signed integer dtype, got {tables.dtype}")
    np.clip(tables, -1, 1, out=tables)
    return tables


def bounded_tables(
    sketch: CountSketch, items: ArrayLike, client_index: ArrayLike, n_clients: int, *, contribution: str = "distinct"
) -> np.ndarray:
    """Every client's bounded table, shape (n_clients, R, W): `CountSketch.encode_clients`, then `bound_cells` for
    ``"distinct"``. ``items`` must already be bounded (`bound_items`): at most m distinct items per client."""
    out = sketch.encode_clients(items, client_index, n_clients)
    return bound_cells(out) if _check_contribution(contribution) == "distinct" else out


def bounded_sum(
    sketch: CountSketch, items: ArrayLike, client_index: ArrayLike, *, contribution: str = "distinct"
) -> np.ndarray:
    """``bounded_tables(...).sum(0)`` without the per-client tables: the (R, W) int64 sum in O(items * R).

    ``"occurrences"``: the sketch is linear, so the sum is ``sketch.encode(items)``. ``"distinct"``: each
    (client, item) pair adds its sign to its (client, row, bucket) cell; cells are clipped to [-1, 1] before the
    rows are summed over clients. Only cells that two of one client's items share need the clip: they are found by
    one sort of the (client, bucket) keys per row.
    """
    if _check_contribution(contribution) == "occurrences":
        return sketch.encode(items)
    it, ci = _items_and_clients(items, client_index)
    table = np.zeros(sketch.shape, dtype=np.int64)
    if it.shape[0] == 0:
        return table
    uniq, inverse = np.unique(it, return_inverse=True)
    buckets, signs = sketch.hash(uniq)
    width = sketch.width
    for r in range(sketch.depth):
        b = buckets[r][inverse]
        # one sorted int64 key per (client, bucket) cell with the item's sign in its lowest bit: a plain sort
        key = (ci * width + b) << 1
        key |= signs[r][inverse] > 0
        key.sort()
        cell_key = key >> 1
        dup = cell_key[1:] == cell_key[:-1]
        if not dup.any():  # no collision inside any client: the row is a plain signed count
            table[r] = np.bincount(b, weights=signs[r][inverse], minlength=width).astype(np.int64)
            continue
        first = np.flatnonzero(np.r_[True, ~dup])
        cell = np.clip(np.add.reduceat((key & 1) * 2 - 1, first), -1, 1)
        table[r] = np.bincount(cell_key[first] % width, weights=cell, minlength=width).astype(np.int64)
    return table


def check_contribution(table: np.ndarray, *, cap: int, contribution: str = "distinct") -> None:
    """ValueError unless one client's (R, W) table respects the bound its sensitivity assumes.

    Every row must have l1 <= cap; for ``"distinct"`` every cell must also lie in [-1, 1]. Together these give
    ``l1 <= cap R`` and ``l2 <= sqrt(cap R)`` (distinct) or ``l2 <= cap sqrt(R)`` (occurrences)."""
    cap = _check_cap(cap)
    arr = np.asarray(table)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"table must be a 2-d integer (R, W) array, got shape {arr.shape} dtype {arr.dtype}")
    row_l1 = np.abs(arr).sum(axis=1)
    if arr.size and int(row_l1.max()) > cap:
        raise ValueError(f"table rows must have l1 <= cap = {cap}, got {int(row_l1.max())}")
    if _check_contribution(contribution) == "distinct" and arr.size and int(np.abs(arr).max()) > 1:
        raise ValueError(f"table cells must lie in [-1, 1] for contribution='distinct', got {int(np.abs(arr).max())}")
