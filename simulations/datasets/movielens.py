"""MovieLens "latest-small" ratings (GroupLens; Harper & Konstan 2015) for DP matrix factorization.

The embedded `simulations/data/movielens/ratings.csv` holds 100,836 ratings (0.5–5 stars) by 610 users of 9,742
movies. Users and movies are re-indexed densely; `min_item_ratings` drops rarely rated movies (a smaller item
table keeps per-example gradients of the factorization cheap); the train/test split is a seeded random split of
the ratings, as in the DP² paper's MovieLens-100k setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "movielens" / "ratings.csv"


@dataclass(frozen=True)
class MovieLensData:
    """Ratings as parallel int64/float32 arrays (user, item, rating), split into train and test."""

    train_users: np.ndarray
    train_items: np.ndarray
    train_ratings: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    test_ratings: np.ndarray
    n_users: int
    n_items: int

    @property
    def n_train(self) -> int:
        return int(len(self.train_ratings))


@lru_cache(maxsize=2)
def _raw(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MovieLens ratings not found at {p}; pass path= to a MovieLens ratings.csv")
    table = np.loadtxt(p, delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"{p}: expected the columns userId,movieId,rating,timestamp")
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2].astype(np.float32)


def load_movielens(
    path: str | Path | None = None,
    *,
    min_item_ratings: int = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MovieLensData:
    """Load the ratings, keep movies with at least `min_item_ratings` ratings, split them at random.

    test_fraction in (0, 1): the share of ratings held out; seed fixes the split.
    """
    if min_item_ratings < 1:
        raise ValueError(f"min_item_ratings must be >= 1, got {min_item_ratings}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    users, items, ratings = _raw(str(Path(path) if path is not None else DEFAULT_PATH))
    _, item_idx, item_counts = np.unique(items, return_inverse=True, return_counts=True)
    keep = item_counts[item_idx] >= min_item_ratings
    users, items, ratings = users[keep], items[keep], ratings[keep]
    if len(ratings) < 2:
        raise ValueError(f"min_item_ratings={min_item_ratings} leaves fewer than 2 ratings")
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(ratings))
    n_test = max(1, int(round(test_fraction * len(ratings))))
    te, tr = perm[:n_test], perm[n_test:]
    return MovieLensData(
        u[tr], i[tr], ratings[tr], u[te], i[te], ratings[te], int(u.max()) + 1, int(i.max()) + 1
    )
