"""Flower SecAgg+ as an *exact* integer sum: the parameters that make it exact, and the check that refuses the rest.

Flower's SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow`` + ``flwr.client.mod.secaggplus_mod``) was built for
weighted means of float models. Per client it uploads, masked mod ``M = modulus_range``,

    q = round(num_examples / max_weight * Q)            (the weight channel)
    z = stochastic_round((clip(x * q / Q, -c, c) + c) * Q / (2c))     with c = clipping_range, Q = quantization_range

and the server returns ``(sum z * 2c/Q - n c) * Q / sum q``, a weighted mean. It is an exact sum of integer tables when

1. every client reports ``num_examples = 1`` and ``max_weight = 1``, so ``q = Q`` and no scaling happens;
2. ``Q = 2c`` (quantizer step 1), so ``z = x + c`` is already an integer and stochastic rounding is a no-op;
3. every entry satisfies ``|x| <= c`` (checked on the client *before* masking; Flower would silently clip);
4. nothing wraps mod M: each z lies in [0, Q] and the weight channel sums to ``n Q``, so ``n Q < M`` suffices;
5. ``c + max|x| < 2^31``, because Flower casts z to int32.

The server then holds ``mean = sum(x) / n`` (a float64 whose error is far below 1/2) and ``sum = rint(mean * n)``.
All of this is decided from public numbers (the per-entry bound and the cohort size) before any client runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_MODULUS_BITS = 32
"""Flower documents ``modulus_range <= 2^32``: masks are added in int64 before the final reduction."""
_INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExactSumParams:
    """SecAgg+ settings under which Flower returns ``sum / n`` exactly for entries within ``±bound``."""

    bound: int
    """The agreed per-entry bound B: every client's table satisfies |x| <= B."""
    max_clients: int
    """The largest cohort these settings are exact for (``max_clients * Q < M``)."""
    clipping_range: float
    """c = the smallest power of two >= B (never below 1)."""
    quantization_range: int
    """Q = 2c: quantizer step 1."""
    modulus_range: int
    """M = 2^32."""

    def workflow_kwargs(self) -> dict[str, float | int]:
        """Keyword arguments for ``SecAggPlusWorkflow`` (besides num_shares / reconstruction_threshold)."""
        return {
            "max_weight": 1.0,
            "clipping_range": self.clipping_range,
            "quantization_range": self.quantization_range,
            "modulus_range": self.modulus_range,
        }


def exact_sum_params(bound: int, clients: int, modulus_bits: int = MAX_MODULUS_BITS) -> ExactSumParams:
    """SecAgg+ parameters for an exact sum of ``clients`` integer tables with entries in [-bound, bound].

    Raises ValueError (naming the limit) when the sum could wrap the modulus or overflow Flower's int32
    quantization: lower the cohort size or the per-entry bound (e.g. the per-client item cap).
    """
    if isinstance(bound, bool) or not isinstance(bound, int | np.integer) or bound < 0:
        raise ValueError(f"bound must be an integer >= 0, got {bound!r}")
    if isinstance(clients, bool) or not isinstance(clients, int | np.integer) or clients < 1:
        raise ValueError(f"clients must be an integer >= 1, got {clients!r}")
    if not 2 <= modulus_bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus_bits must be in [2, {MAX_MODULUS_BITS}], got {modulus_bits}")
    c = 1 if bound <= 1 else 1 << (int(bound) - 1).bit_length()  # smallest power of two >= bound (>= 1)
    if c + int(bound) > _INT32_LIMIT:
        raise ValueError(f"bound must be <= 2^30 (Flower quantizes to int32), got {bound}")
    q = 2 * c
    m = 1 << modulus_bits
    max_clients = (m - 1) // q
    if clients > max_clients:
        raise ValueError(
            f"SecAgg+ sum could wrap the modulus: clients * quantization_range = {clients} * {q} >= 2^{modulus_bits}; "
            f"with per-entry bound {bound} at most {max_clients} clients per round are exact "
            "(lower clients_per_round or the per-client item cap)"
        )
    return ExactSumParams(
        bound=int(bound), max_clients=int(max_clients), clipping_range=float(c), quantization_range=q, modulus_range=m
    )


def mean_to_sum(mean: np.ndarray, n: int) -> np.ndarray:
    """Turn SecAgg+'s aggregate ``sum / n`` back into the exact int64 sum: ``rint(mean * n)``.

    Exact while |sum| < 2^52: the float mean carries relative error <= 2^-52, far below 1/2 after scaling.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = np.rint(np.asarray(mean, dtype=np.float64) * n)
    return total.astype(np.int64)


def secagg_shares(cohort: int) -> int:
    """An odd neighbour count ~ 2 log2(n) + 1 (SecAgg+'s O(log n) graph), at most the cohort.

    flwr 1.41's client mod crashes on an even integer ``num_shares``, so the count is always odd or the full cohort.
    """
    if cohort < 3:
        return cohort
    k = 2 * int(np.ceil(np.log2(cohort))) + 1
    return cohort if k >= cohort else k
