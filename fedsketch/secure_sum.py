"""Exact secure summation over Z_{2^k} by pairwise masking.

The protocol is Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning"
(CCS 2017) without the key agreement and the secret sharing, on the sparse masking graph of SecAgg+
(Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020):

    client i uploads   y_i = x_i + b_i + sum_{j ~ i, i<j} m_ij - sum_{j ~ i, j<i} m_ji   (mod 2^k)

where ``m_ij = PRG(key_ij)`` is a pairwise mask, ``b_i = PRG(key_i)`` a self mask, and ``j ~ i`` the
neighbours of i in a random k-regular ring graph.  Pairwise masks cancel in the sum over any set of
clients that contains both endpoints; the server removes the masks of pairs cut by a dropout (the pair
keys of dropped clients are revealed, as the surviving neighbours would do from Shamir shares) and the
self masks of the survivors (their keys are revealed), and is left with ``sum_{i alive} x_i mod 2^k``.

What is simulated and what is not.  Keys are derived from one seed (``SeedSequence(seed,
spawn_key=(round, tag, i, j))`` feeding a numpy PRG, SFC64 or Philox) instead of Diffie-Hellman
agreement, and seed "revelation" is the server calling the same derivation.  The class is therefore a faithful model of what
the *server sees* (masked vectors, their sum, the revealed keys) against an honest-but-curious server, not
a cryptographic implementation: anyone holding ``seed`` can unmask every client.

Security trade-off of the sparse graph.  With ``neighbours = k`` each client shares masks with k others,
so the masking costs O(n k L) instead of O(n^2 L).  A client's upload stays hidden unless the server
colludes with *all* k of its neighbours, and the sum of the survivors reveals nothing more than the total
only while the survivors' masking graph stays connected (a split graph would let the server unmask the sum
of each component separately).  Bell et al. show k = O(log n) suffices with high probability for a
bounded fraction of corrupted and dropped clients; the default here is ``2 * ceil(log2 n)``.  This class
*checks* connectivity of the survivors and aborts instead of leaking partial sums.

Exactness.  Signed integers are mapped to Z_{2^k} in two's complement and back to the centred range
[-2^(k-1), 2^(k-1)).  Before summing, ``n * max|entry| <= 2^(k-1) - 1`` is checked, so the sum of any
subset of clients lies in the centred range and is recovered exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_MODULUS_BITS = 8
MAX_MODULUS_BITS = 62
_PAIR, _SELF, _GRAPH = 0, 1, 2  # spawn-key tags that keep the derived key streams apart
_PRGS = {"sfc64": np.random.SFC64, "philox": np.random.Philox}


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _check_bits(modulus_bits: int) -> int:
    if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int | np.integer):
        raise ValueError(f"modulus_bits must be an int in [{MIN_MODULUS_BITS}, {MAX_MODULUS_BITS}], got {modulus_bits!r}")
    if not MIN_MODULUS_BITS <= modulus_bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus_bits must be in [{MIN_MODULUS_BITS}, {MAX_MODULUS_BITS}], got {modulus_bits}")
    return int(modulus_bits)


def _ring_dtype(modulus_bits: int) -> type[np.unsignedinteger]:
    # Unsigned arithmetic wraps mod 2^16 / 2^32 / 2^64, and 2^k divides the word size, so reducing at the end
    # is exact; the narrowest word halves the PRG output and the memory traffic.
    if modulus_bits <= 16:
        return np.uint16
    return np.uint32 if modulus_bits <= 32 else np.uint64


def to_ring(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Map signed integers in [-2^(k-1), 2^(k-1)) to their residues in Z_{2^k} (two's complement), as uint64."""
    bits = _check_bits(modulus_bits)
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"values must have an integer dtype, got {v.dtype}")
    half = 1 << (bits - 1)
    if v.size and (int(v.min()) < -half or int(v.max()) >= half):
        raise ValueError(f"values must lie in [-2^{bits - 1}, 2^{bits - 1}) for modulus_bits={bits}")
    return v.astype(np.int64).astype(np.uint64) & np.uint64((1 << bits) - 1)


def from_ring(residues: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Lift residues of Z_{2^k} to the centred signed range [-2^(k-1), 2^(k-1)) as int64."""
    bits = _check_bits(modulus_bits)
    r = np.asarray(residues)
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"residues must have an integer dtype, got {r.dtype}")
    r = r.astype(np.uint64) & np.uint64((1 << bits) - 1)
    # Sign-extend bit k-1: shift it to bit 63, reinterpret as signed, arithmetic-shift back.
    shift = np.uint64(64 - bits)
    return (r << shift).view(np.int64) >> np.int64(64 - bits)


def required_modulus_bits(num_clients: int, max_abs: int) -> int:
    """Smallest k with ``num_clients * max_abs <= 2^(k-1) - 1`` (never below MIN_MODULUS_BITS)."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if max_abs < 0:
        raise ValueError(f"max_abs must be >= 0, got {max_abs}")
    need = int(num_clients) * int(max_abs)
    return max(MIN_MODULUS_BITS, need.bit_length() + 1)


@dataclass(frozen=True)
class SecureSumResult:
    """What the server learns from one round: the exact sum over the surviving clients, and who survived.

    ``total`` is int64 in the centred range of Z_{2^modulus_bits}; ``dropped`` are client indices (rows of
    the submitted array) whose uploads never arrived.
    """

    total: np.ndarray
    n_clients: int
    n_survivors: int
    dropped: tuple[int, ...]
    modulus_bits: int
    rejected: tuple[int, ...] = ()  # clients whose payload broke ``bound`` (also in ``dropped``)

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits


class SecureSumAborted(RuntimeError):
    """The round cannot complete without revealing more than the sum (too few survivors, split mask graph)."""


class SecureSum(ABC):
    """Interface of a secure summation backend: exact integer sums over Z_{2^modulus_bits}."""

    modulus_bits: int

    @abstractmethod
    def sum(
        self, vectors: np.ndarray | Sequence[np.ndarray], dropped: Sequence[int] = (), *, bound: int | None = None
    ) -> SecureSumResult:
        """Sum the rows of ``vectors`` (one int vector per client) over the clients not in ``dropped``."""


@dataclass(frozen=True)
class ServerView:
    """Everything the server held in a round: the masked uploads it received, their sum, the revealed keys.

    Kept so tests (and curious readers) can check that the uploads look uniform; the raw vectors are never
    stored here.
    """

    uploads: np.ndarray  # (n_survivors, L) residues in Z_{2^k}
    masked_sum: np.ndarray  # sum of uploads mod 2^k
    survivors: np.ndarray
    revealed_pairs: np.ndarray  # (P, 2) pairs (a < b) whose key was revealed because one end dropped


class InProcessSecureSum(SecureSum):
    """Pairwise-masked secure sum simulated in one process (see the module docstring for the protocol).

    Args:
        modulus_bits: k, the sum lives in Z_{2^k}; in [8, 62].
        seed: master seed of all pairwise/self keys and of the masking graph.  **The object holds it**, so it can
            unmask every client: it simulates the protocol's cost and exactness (what the server sees), it is not
            a trust boundary.
        neighbours: degree of the masking graph (even; rounded up).  ``None`` -> ``2 * ceil(log2 n)``;
            ``>= n - 1`` -> every pair (the original Bonawitz protocol).
        min_survivors: the round aborts (``SecureSumAborted``) when fewer clients survive; at least 2 (the sum of
            one survivor is its own vector).  Set it to the noise floor a DP calibration assumes.
        self_masks: add Bonawitz' self masks b_i (protect a late upload of a client declared dropped).
        prg: the generator that expands a key into a mask: ``"sfc64"`` (default, ~2.7x faster) or
            ``"philox"`` (counter-based Philox-4x64-10).  Neither is a cryptographic PRG; a deployment
            expands keys with AES-CTR / ChaCha20 / HMAC-DRBG.  Both pass BigCrush, which is all a
            simulation of the server's view needs.

    Each call to ``sum`` is a fresh round (a new round id enters every key), so masks are never reused:
    reusing them would reveal the difference of a client's vectors between rounds.
    """

    def __init__(
        self,
        modulus_bits: int = 32,
        seed: int = 0,
        *,
        neighbours: int | None = None,
        min_survivors: int = 2,
        self_masks: bool = True,
        prg: str = "sfc64",
    ) -> None:
        self.modulus_bits = _check_bits(modulus_bits)
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if neighbours is not None and (not _is_int(neighbours) or neighbours < 2):
            raise ValueError(f"neighbours must be an integer >= 2 (or None for 2*ceil(log2 n)), got {neighbours!r}")
        if not _is_int(min_survivors) or min_survivors < 2:
            raise ValueError(f"min_survivors must be an integer >= 2 (one survivor's sum is its vector), got "
                             f"{min_survivors!r}")
        if not isinstance(self_masks, bool):
            raise ValueError(f"self_masks must be a bool, got {self_masks!r}")
        if prg not in _PRGS:
            raise ValueError(f"prg must be one of {sorted(_PRGS)}, got {prg!r}")
        self.prg = prg
        self.seed = int(seed)
        self.neighbours = None if neighbours is None else int(neighbours)
        self.min_survivors = int(min_survivors)
        self.self_masks = bool(self_masks)
        self.rounds_done = 0
        self.server_view: ServerView | None = None

    # ---- public -------------------------------------------------------------------------------------

    def sum(
        self,
        vectors: np.ndarray | Sequence[np.ndarray],
        dropped: Sequence[int] = (),
        *,
        bound: int | None = None,
        reject_invalid: bool = False,
    ) -> SecureSumResult:
        """Securely sum one int array per client over the clients not in ``dropped``.

        ``vectors``: shape ``(clients, ...)``, e.g. ``(n, depth, width)`` sketch tables (or a list of equal
        arrays); ``result.total`` has the trailing shape.  ``dropped``: indices of clients whose upload never
        arrives.

        ``bound``: the public per-entry bound B every client must respect (|x| <= B); a client breaking it
        is rejected with a ValueError naming its index, or, with ``reject_invalid=True``, treated as a
        dropout (listed in ``result.rejected``) so the round completes with the valid clients.  ``None`` takes B = max|entry| of the submitted
        data (a simulation shortcut).  Raises ValueError when ``n * B`` could wrap the modulus, and
        ``SecureSumAborted`` when fewer than ``min_survivors`` survive or the survivors' masking graph is
        split.
        """
        x, rejected = self._validate(vectors, bound, reject_invalid)
        entry_shape = x.shape[1:]  # e.g. (depth, width) for count-sketch tables
        x = x.reshape(x.shape[0], -1)
        n, length = x.shape
        drop = np.union1d(self._validate_dropped(dropped, n), np.asarray(rejected, dtype=np.int64))
        round_id = self.rounds_done
        self.rounds_done += 1
        alive = np.ones(n, dtype=bool)
        alive[drop] = False
        n_alive = int(alive.sum())
        if n_alive < self.min_survivors:
            raise SecureSumAborted(f"only {n_alive} of {n} clients survived, below min_survivors={self.min_survivors}")
        pairs = self.mask_graph(n, round_id)
        _check_connected(pairs, alive)

        # Client side.  A dropped client never uploads, so only the survivors' uploads are formed; each one
        # still carries the masks of *all* its pairs, including those with clients that dropped later.
        uploads = self._mask_uploads(x, alive, pairs, round_id)
        del x
        view, unmasked = self._server_unmask(uploads, alive, pairs, round_id, length)
        self.server_view = view
        total = from_ring(unmasked, self.modulus_bits).reshape(entry_shape)
        return SecureSumResult(total, n, n_alive, tuple(int(i) for i in drop), self.modulus_bits, tuple(rejected))

    def mask_graph(self, n: int, round_id: int = 0) -> np.ndarray:
        """Pairs (a, b), a < b, that share a mask: a ring over a seeded random permutation, each client linked
        to the ``neighbours/2`` next positions on both sides (a Harary graph, as in SecAgg+)."""
        k = self.neighbours if self.neighbours is not None else 2 * math.ceil(math.log2(max(n, 2)))
        half = (k + 1) // 2
        if n < 2:
            return np.empty((0, 2), dtype=np.int64)
        if 2 * half >= n - 1:  # complete graph
            a, b = np.triu_indices(n, k=1)
            return np.stack([a, b], axis=1).astype(np.int64)
        ss = np.random.SeedSequence(self.seed, spawn_key=(round_id, _GRAPH))
        perm = np.random.Generator(np.random.Philox(ss)).permutation(n)
        pos = np.arange(n)
        ends = [np.stack([perm[pos], perm[(pos + d) % n]], axis=1) for d in range(1, half + 1)]
        e = np.concatenate(ends)
        return np.sort(e, axis=1)

    # ---- client side --------------------------------------------------------------------------------

    def _prg(self, round_id: int, tag: int, a: int, b: int, length: int) -> np.ndarray:
        """Mask vector of ``length`` uniform words from the key of (round, tag, a, b): one PRG stream."""
        dtype = _ring_dtype(self.modulus_bits)
        per_word = 8 // np.dtype(dtype).itemsize  # ring words per 64-bit PRG output
        gen = _PRGS[self.prg](np.random.SeedSequence(self.seed, spawn_key=(round_id, tag, a, b)))
        return gen.random_raw(-(-length // per_word)).view(dtype)[:length]

    def _mask_uploads(self, x: np.ndarray, alive: np.ndarray, pairs: np.ndarray, round_id: int) -> np.ndarray:
        """Uploads of the surviving clients, rows in index order: x_i + b_i + sum_j +-m_ij (mod 2^k)."""
        length = x.shape[1]
        dtype = _ring_dtype(self.modulus_bits)
        # Two's complement residues mod 2^16/2^32/2^64: a copy, the clients' upload buffers.
        y = (x if alive.all() else x[alive]).astype(dtype)
        row = np.cumsum(alive) - 1  # client index -> upload row
        for a, b in pairs.tolist():  # one PRG call per pair of length L, never per entry
            if not (alive[a] or alive[b]):
                continue
            m = self._prg(round_id, _PAIR, a, b, length)
            if alive[a]:
                y[row[a]] += m  # the smaller index adds the pair mask ...
            if alive[b]:
                y[row[b]] -= m  # ... the larger one subtracts it
        if self.self_masks:
            for i in np.flatnonzero(alive).tolist():
                y[row[i]] += self._prg(round_id, _SELF, i, i, length)
        y &= dtype((1 << self.modulus_bits) - 1)  # uploads are elements of Z_{2^k}
        return y

    # ---- server side --------------------------------------------------------------------------------

    def _server_unmask(
        self, uploads: np.ndarray, alive: np.ndarray, pairs: np.ndarray, round_id: int, length: int
    ) -> tuple[ServerView, np.ndarray]:
        dtype = uploads.dtype
        mod_mask = dtype.type((1 << self.modulus_bits) - 1)
        masked_sum = uploads.sum(axis=0, dtype=dtype) & mod_mask
        s = masked_sum.copy()
        # Pairs cut by a dropout: the survivor's mask has no partner; regenerate it from the revealed key.
        cut = pairs[alive[pairs[:, 0]] != alive[pairs[:, 1]]]
        for a, b in cut.tolist():
            m = self._prg(round_id, _PAIR, a, b, length)
            if alive[a]:
                s -= m
            else:
                s += m
        if self.self_masks:
            for i in np.flatnonzero(alive).tolist():
                s -= self._prg(round_id, _SELF, i, i, length)
        s &= mod_mask
        view = ServerView(uploads=uploads, masked_sum=masked_sum, survivors=np.flatnonzero(alive), revealed_pairs=cut)
        return view, s

    # ---- validation ---------------------------------------------------------------------------------

    def _validate(
        self, vectors: np.ndarray | Sequence[np.ndarray], bound: int | None, reject_invalid: bool
    ) -> tuple[np.ndarray, list[int]]:
        if not isinstance(vectors, np.ndarray):
            try:
                vectors = np.stack([np.asarray(v) for v in vectors])
            except ValueError as err:
                raise ValueError(f"vectors must be client vectors of one common length: {err}") from None
        x = vectors
        if x.ndim < 2 or x.size == 0:
            raise ValueError(f"vectors must be a non-empty array (clients, ...) with ndim >= 2, got shape {x.shape}")
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"vectors must have an integer dtype, got {x.dtype}")
        n = x.shape[0]
        half = 1 << (self.modulus_bits - 1)
        bad: list[int] = []
        if reject_invalid and bound is None:
            raise ValueError("reject_invalid=True needs a public bound (bound >= 0)")
        if bound is not None:
            if not _is_int(bound) or bound < 0:
                raise ValueError(f"bound must be an integer >= 0, got {bound!r}")
            flat = x.reshape(n, -1)
            his, los = flat.max(axis=1).tolist(), flat.min(axis=1).tolist()  # exact Python ints
            bad = [i for i in range(n) if his[i] > bound or los[i] < -bound]
            if bad and not reject_invalid:
                raise ValueError(f"vectors: client {bad[0]} has an entry outside [-bound, bound] = [-{bound}, {bound}]")
            max_abs = int(bound)
        else:
            max_abs = max(abs(int(x.max())), abs(int(x.min())))
        if n * max_abs > half - 1:
            raise ValueError(
                f"modulus_bits={self.modulus_bits} could wrap: n * max|entry| = {n} * {max_abs} exceeds "
                f"2^{self.modulus_bits - 1} - 1; use modulus_bits >= {required_modulus_bits(n, max_abs)} "
                f"(allowed {MIN_MODULUS_BITS}..{MAX_MODULUS_BITS})"
            )
        return x, bad

    @staticmethod
    def _validate_dropped(dropped: Sequence[int], n: int) -> np.ndarray:
        raw = np.asarray(list(dropped))
        if raw.size and (raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.integer)):
            raise ValueError(f"dropped must hold integer client indices in [0, {n}), got {list(dropped)!r}")
        d = np.unique(raw.astype(np.int64))
        if d.size and (d[0] < 0 or d[-1] >= n):
            raise ValueError(f"dropped must hold client indices in [0, {n}), got {d.tolist()}")
        return d


def _check_connected(pairs: np.ndarray, alive: np.ndarray) -> None:
    """Abort when the survivors' masking graph is split: each component's sum would be unmaskable."""
    n_alive = int(alive.sum())
    if n_alive <= 1:
        return
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = alive[pairs[:, 0]] & alive[pairs[:, 1]]
    p = pairs[keep]
    idx = np.cumsum(alive) - 1  # relabel survivors 0..n_alive-1
    g = coo_matrix((np.ones(len(p)), (idx[p[:, 0]], idx[p[:, 1]])), shape=(n_alive, n_alive))
    n_comp, _ = connected_components(g, directed=False)
    if n_comp > 1:
        raise SecureSumAborted(
            f"the survivors' masking graph split into {n_comp} components; unmasking would reveal each "
            "component's partial sum. Increase neighbours."
        )
