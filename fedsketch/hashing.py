"""Seeded hash families over the Mersenne prime p = 2^61 - 1, vectorized with exact uint64 arithmetic.

Row r of a `RowHashes` evaluates a degree-3 polynomial over Z_p with seeded coefficients,

    g_r(x) = sum_{i<=3} (c_{r,i} + c'_{r,i} v + c''_{r,i} v^2) u^i  mod p,      x = v * p + u, u in [0, p), v in {0,1,2},

and reads the sign from its lowest bit, sign_r(x) = 1 - 2 (g_r(x) & 1), and the bucket from the rest,
bucket_r(x) = (g_r(x) >> 1) mod W. Degree-3 polynomials are a 4-wise independent family, so the (bucket, sign)
pairs are 4-wise independent (pairwise independence is all the bucket analysis needs). The map x -> (u, v) is
injective on [0, 2^62) and {psi(v) (x) phi(u)} stays linearly independent for any 4 distinct ids, so independence
holds over the whole id range; ids below p (every practical domain) have v = 0 and skip the extra terms.
Buckets and signs are off uniform by at most about W / 2^60 and 1/p.

One polynomial per row serves both bucket and sign, so a row costs 3 modular products per id instead of the 4 that a
separate linear bucket hash plus a cubic sign polynomial would take. In our multi-round simulations (hybrid sketch,
d=20,000, W=256, R=5, 30-40 seeds) its l_inf error matched fully random hashes and a linear bucket hash within noise.

Coefficients come from BLAKE2b of (seed, tag, row, index), so the same seed gives the same hashes on every machine
and every numpy version. Products a*x mod p are computed exactly in uint64 by splitting both factors into 32-bit
limbs and folding 2^61 = 1 (mod p), with values kept only partly reduced until the end of each polynomial and a
two-product path when all ids are below 2^32: no 128-bit integers, no Python loop over ids (ids are processed in
cache-sized blocks, all R rows at once).
"""

from __future__ import annotations

import hashlib

import numpy as np

MERSENNE_P = (1 << 61) - 1
MAX_ID = 1 << 62
_P = np.uint64(MERSENNE_P)
_LO32 = np.uint64(0xFFFFFFFF)
_LO29 = np.uint64((1 << 29) - 1)
_U3, _U29, _U32, _U61 = np.uint64(3), np.uint64(29), np.uint64(32), np.uint64(61)


def _coefficient(seed: int, tag: str | None, row: int, name: str) -> int:
    """A reproducible field element in [0, p) from BLAKE2b of its identifying tuple."""
    key = f"fedsketch/v1/{seed}/{tag}/{row}/{name}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "little") % MERSENNE_P


# Arithmetic mod p is "lazy": intermediate values are only folded, (s & p) + (s >> 61) < 2^61 + 8, and made
# canonical (in [0, p)) once per polynomial. The bounds in the comments show that no uint64 operation overflows.


def _fold(s: np.ndarray) -> np.ndarray:
    """A value congruent to s mod p and below 2^61 + 8, for uint64 s (in place on s's buffer where possible)."""
    r = s & _P
    s >>= _U61
    r += s
    return r


def _canonical(s: np.ndarray) -> np.ndarray:
    """s mod p in [0, p) for uint64 s."""
    r = _fold(s)
    r -= _P * (r >= _P)
    return r


def _limbs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x >> _U32, x & _LO32


def _mulmod(a: np.ndarray, x_hi: np.ndarray, x_lo: np.ndarray) -> np.ndarray:
    """a * x mod p (lazy) for a < 2^62 + 8 and x < 2^61 given as limbs x = x_hi 2^32 + x_lo.

    a x = hh 2^64 + mid 2^32 + lo with 2^64 = 8 (mod p) and mid 2^32 = (mid >> 29) 2^61 + (mid & (2^29-1)) 2^32.
    """
    a_hi, a_lo = _limbs(a)  # a_hi < 2^30 + 1
    lo = x_lo * a_lo  # < 2^64
    mid = x_lo * a_hi
    mid += x_hi * a_lo  # < 2^62 + 2^61 + 2^32
    s = x_hi * a_hi
    s <<= _U3  # 8 hh < 2^62 + 2^35
    s += mid >> _U29
    mid &= _LO29
    mid <<= _U32  # < 2^61
    s += mid
    s += lo >> _U61
    lo &= _P
    s += lo  # < 2^63 + 2^36 < 2^64
    return _fold(s)


def _mulmod_small(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """a * x mod p (lazy) for a < 2^62 + 8 and x < 2^32: the high limb of x is zero, so two products suffice."""
    a_hi, a_lo = _limbs(a)
    lo = a_lo * x  # < 2^64
    mid = a_hi * x  # < 2^62 + 2^32
    s = mid >> _U29
    mid &= _LO29
    mid <<= _U32
    s += mid
    s += lo >> _U61
    lo &= _P
    s += lo  # < 2^62 + 2^35
    return _fold(s)


def _poly(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_i coeffs[i] x^i mod p in [0, p) by Horner's rule, coeffs (4, R, 1) uint64 (coeffs[0] the constant term)
    against ids x (1, n) < p: all R rows at once, (R, n) uint64."""
    if x.size and int(x.max()) < (1 << 32):
        mul = lambda acc: _mulmod_small(acc, x)  # noqa: E731
    else:
        x_hi, x_lo = _limbs(x)
        mul = lambda acc: _mulmod(acc, x_hi, x_lo)  # noqa: E731
    acc = mul(np.broadcast_to(coeffs[-1], (coeffs.shape[1], 1)))
    for i in range(coeffs.shape[0] - 2, -1, -1):
        acc += coeffs[i]  # < 2^62 + 8
        if i > 0:
            acc = mul(acc)
    return _canonical(acc)


def _addmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a += b
    a -= _P * (a >= _P)
    return a


class RowHashes:
    """R seeded hash rows; row r gives every id a bucket in [0, W) and a sign in {-1, +1}.

    Row r evaluates g_r(x) = sum_{i<=3} (c_{r,i} + c'_{r,i} v + c''_{r,i} v^2) u^i mod p (x = v p + u), a 4-wise
    independent value that is uniform on [0, p); the sign is its lowest bit and the bucket is (g >> 1) mod W.
    With `sign_seed`, the signs are those of the row seeded by `sign_seed` (the buckets stay those of `seed`), so
    rounds can share buckets but draw fresh signs (the alternative reading in `fedsketch.hybrid`).
    """

    _CHUNK = 1 << 14  # ids per vectorized block: (R, chunk) uint64 temporaries stay in cache

    def __init__(self, depth: int, width: int, seed: int, sign_seed: int | None = None) -> None:
        self.depth, self.width, self.seed, self.sign_seed = int(depth), int(width), int(seed), sign_seed
        self._coef = [self._row(self.seed, None, r) for r in range(self.depth)]
        # signs of (seed, sign_seed) are the signs of seed=sign_seed; sign_seed == seed is the plain sketch
        same = sign_seed is None or int(sign_seed) == self.seed
        self._sign_coef = None if same else [self._row(int(sign_seed), None, r) for r in range(self.depth)]
        # (3 polynomials in v, 4 powers of u, R rows, 1) so that a row's coefficient broadcasts against (1, n) ids
        self._C = np.array(self._coef, dtype=np.uint64).transpose(1, 2, 0)[..., None]
        self._S = None if self._sign_coef is None else np.array(self._sign_coef, dtype=np.uint64).transpose(1, 2, 0)[..., None]

    @staticmethod
    def _row(seed: int, tag: str | None, r: int) -> list[list[int]]:
        return [[_coefficient(seed, tag, r, f"c{j}{i}") for i in range(4)] for j in range(3)]

    @staticmethod
    def _values(C: np.ndarray, x: np.ndarray) -> np.ndarray:
        """g(x) in [0, p) for all rows, (R, n) uint64, for uint64 ids x (1-d) below 2^62."""
        big = x >= _P
        if not bool(big.any()):
            return _poly(C[0], x[None, :])
        v = (big.astype(np.uint64) + (x >= np.uint64(2 * MERSENNE_P)))[None, :]
        u = x[None, :] - v * _P
        g = _poly(C[0], u)
        g = _addmod(g, _canonical(_mulmod_small(_poly(C[1], u), v)))
        return _addmod(g, _canonical(_mulmod_small(_poly(C[2], u), v * v)))

    def hash(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Buckets (R, n) intp in [0, W) and signs (R, n) int8 in {-1, +1} for int64 ids in [0, 2^62).

        Ids are not validated here (callers do it at the API boundary).
        """
        x = np.ascontiguousarray(ids, dtype=np.int64).astype(np.uint64)
        n = x.shape[0]
        buckets = np.empty((self.depth, n), dtype=np.intp)
        signs = np.empty((self.depth, n), dtype=np.int8)
        for a in range(0, n, self._CHUNK):
            xs = x[a : a + self._CHUNK]
            g = self._values(self._C, xs)
            s = g if self._S is None else self._values(self._S, xs)
            buckets[:, a : a + xs.shape[0]], signs[:, a : a + xs.shape[0]] = split(g, s, self.width)
        return buckets, signs

    def raw(self, ids: np.ndarray) -> np.ndarray:
        """The (R, n) uint64 polynomial values g_r(x) (without `sign_seed`): `split(g, g, W)` gives the buckets and
        signs for any width W, so one evaluation serves many candidate widths (used by `fedsketch.sizing`)."""
        if self._S is not None:
            raise ValueError("raw hash values need sign_seed=None (buckets and signs from one polynomial)")
        x = np.ascontiguousarray(ids, dtype=np.int64).astype(np.uint64)
        out = np.empty((self.depth, x.shape[0]), dtype=np.uint64)
        for a in range(0, x.shape[0], self._CHUNK):
            out[:, a : a + self._CHUNK] = self._values(self._C, x[a : a + self._CHUNK])
        return out


def split(g: np.ndarray, s: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Buckets (g >> 1) mod W as intp and signs 1 - 2 (s & 1) as int8 from polynomial values g (bucket) and s (sign)."""
    one = np.uint64(1)
    signs = (s & one).astype(np.int8)
    signs *= -2
    signs += 1
    h = g >> one
    if width & (width - 1) == 0:  # power of two: a mask instead of a uint64 division
        h &= np.uint64(width - 1)
    else:
        h %= np.uint64(width)
    return h.astype(np.intp), signs
