"""Privacy accounting for DP-SGD-style training (DP-SGD, DP-Adam, DP²: one subsampled Gaussian per step).

Everything is built on Google's ``dp_accounting`` events; no formula here is hand-rolled except the textbook
group-privacy lemma (k·ε, k·e^{(k-1)ε}·δ) used for the user-level figure:

* Poisson sampling: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), T)``, accounted with RDP (orders as in
  Opacus' RDP accountant, so both agree) and/or PLD.
* Shuffled, each example once per epoch (the conservative figure of TF Privacy's privacy statement): no
  amplification, an example is in one batch per epoch, so ``SelfComposed(Gaussian(σ), ceil(T·q))``.
* PRV (Gopi et al. 2021), Opacus' default accountant and so ``dpopt.PrivacyEngine``'s, is Opacus'
  ``PRVAccountant`` on the same history; it is listed beside RDP and PLD so every report states the figure the
  engine would give.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries, the format of Opacus' accountants:
:func:`history_epsilon` composes one (σ may change during training, e.g. under a noise scheduler).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

__all__ = [
    "ACCOUNTANTS",
    "available_accountants",
    "PROTECTED",
    "PrivacyReport",
    "privacy_report",
    "calibrate_noise",
    "epsilon",
    "history_epsilon",
    "epsilon_curve",
]

ACCOUNTANTS = ("rdp", "pld", "prv")
PROTECTED = "example-level, add/remove adjacency"
# Opacus' RDPAccountant.DEFAULT_ALPHAS: using the same orders makes our RDP ε equal Opacus' for one history.
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
PLD_DISCRETIZATION = 1e-4


def _is_int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Integral)


def _is_real(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Real)


def _validate(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not (_is_real(noise_multiplier) and 0 < noise_multiplier < float("inf")):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if not (_is_real(sample_rate) and 0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (_is_real(delta) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")


def _accountant(name: str) -> dp_accounting.PrivacyAccountant:
    """A fresh dp_accounting accountant ("rdp" or "pld"; PRV is Opacus', see :func:`_opacus_epsilon`)."""
    if name == "rdp":
        return rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
    if name == "pld":
        return pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f"accountant must be 'rdp' or 'pld' here, got {name!r}")


def available_accountants() -> tuple[str, ...]:
    """The accountants this install can run: rdp and pld always (dp-accounting is a core dependency), prv only
    where Opacus (the ``[dp]`` extra) is installed — so a core install still gets a report."""
    return ACCOUNTANTS if importlib.util.find_spec("opacus") is not None else ("rdp", "pld")


def _opacus_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε of ``history`` by Opacus' PRV accountant (the default of Opacus' and dpopt's PrivacyEngine)."""
    try:
        from opacus.accountants import PRVAccountant
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the 'prv' accountant is Opacus', which is not installed: pip install 'fedprivacy-toolkit[dp]', "
            "or ask for accountants=('rdp', 'pld')", name="opacus") from err

    acc = PRVAccountant()
    acc.history = [(float(s), float(q), int(t)) for s, q, t in history]
    try:
        return float(acc.get_epsilon(delta))
    except (ValueError, RuntimeError, ArithmeticError) as err:
        raise ValueError(
            f"the PRV accountant could not evaluate this history ({len(history)} entries, smallest σ "
            f"{min(h[0] for h in history):.3g}): {err}. Use accountant='rdp' (an upper bound) instead"
        ) from err


def dpsgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> dp_event.DpEvent:
    """T Poisson-subsampled Gaussian releases (σ, q): the event of DP-SGD, DP-Adam and DP² alike."""
    step = dp_event.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        step = dp_event.PoissonSampledDpEvent(sample_rate, step)
    return dp_event.SelfComposedDpEvent(step, steps)


@contextlib.contextmanager
def _quiet_absl():
    """dp_accounting logs (via absl) each fractional RDP order whose series it cannot converge and then drops
    that order; dropping only removes a candidate from the minimum over orders (a larger, safe ε), so the
    per-call warning is noise for a report."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _composed(event: dp_event.DpEvent, accountant: str) -> dp_accounting.PrivacyAccountant:
    acc = _accountant(accountant)
    with _quiet_absl():
        acc.compose(event)
    return acc


def _epsilon_of(event: dp_event.DpEvent, delta: float, accountant: str) -> float:
    acc = _composed(event, accountant)
    with _quiet_absl():
        return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=8)
def _pld_step(noise_multiplier: float, sample_rate: float) -> privacy_loss_distribution.PrivacyLossDistribution:
    """One step's PLD, built as PLDAccountant builds it; composing it T times is cheap next to building it."""
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=PLD_DISCRETIZATION,
        sampling_prob=sample_rate,
    )


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` after ``steps`` Poisson-sampled steps with noise σ and rate q."""
    _validate(noise_multiplier, sample_rate, steps, delta)
    _check_accountant(accountant)
    if accountant == "prv":
        return _opacus_epsilon([(noise_multiplier, sample_rate, steps)], delta)
    if accountant == "pld":  # reuse the one-step PLD across calls (curves, the guard's search)
        step = _pld_step(float(noise_multiplier), float(sample_rate))
        return float(step.self_compose(steps).get_epsilon_for_delta(delta))
    return _epsilon_of(dpsgd_event(noise_multiplier, sample_rate, steps), delta, accountant)


def history_epsilon(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of a training history ``[(σ, q, steps), ...]`` (Opacus' accountant format): the
    composition of each entry's Poisson-subsampled Gaussian steps. 0 for an empty history."""
    _check_accountant(accountant)
    entries = [(float(s), float(q), int(t)) for s, q, t in history]
    if not entries:
        return 0.0
    for s, q, t in entries:
        _validate(s, q, t, delta)
    if len(entries) == 1:
        return epsilon(*entries[0], delta, accountant)
    if accountant == "prv":
        return _opacus_epsilon(entries, delta)
    event = dp_event.ComposedDpEvent([dpsgd_event(s, q, t) for s, q, t in entries])
    return _epsilon_of(event, delta, accountant)


def _group_epsilon(eps_of_delta: Callable[[float], float], k: int, delta: float) -> float:
    """User-level ε for users with ≤ k examples: (ε', δ') example-level gives (kε', k·e^{(k-1)ε'}·δ').

    k·ε(δ') falls as δ' grows, so take the largest δ' on a fine log grid (step 0.05 nats below δ/k) with
    k·e^{(k-1)ε(δ')}·δ' ≤ δ, and return k·ε(δ'); inf if none of the grid is feasible.
    """
    if k == 1:
        return eps_of_delta(delta)
    log_target = math.log(delta)
    for i in range(1, 1201):
        log_d = math.log(delta / k) - 0.05 * i
        e = eps_of_delta(math.exp(log_d))
        if math.isfinite(e) and math.log(k) + (k - 1) * e + log_d <= log_target:
            return k * e
    return math.inf


@dataclass(frozen=True)
class PrivacyReport:
    """What a DP-SGD-style run guarantees (see :func:`privacy_report`)."""

    epsilon: dict[str, float]
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    protected: str = PROTECTED
    epochs: float = 0.0
    epsilon_shuffled: float = 0.0
    max_examples_per_user: int | None = None
    user_epsilon: dict[str, float] = field(default_factory=dict)
    user_epsilon_shuffled: float | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict with keys epsilon, noise_multiplier, sample_rate, steps, delta, protected, ..."""
        return {
            "epsilon": dict(self.epsilon),
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "protected": self.protected,
            "epochs": self.epochs,
            "epsilon_shuffled": self.epsilon_shuffled,
            "max_examples_per_user": self.max_examples_per_user,
            "user_epsilon": dict(self.user_epsilon),
            "user_epsilon_shuffled": self.user_epsilon_shuffled,
            "versions": dict(self.versions),
        }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("dp-accounting", "opacus"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - both are dependencies
            out[pkg] = "not installed"
    return out


def privacy_report(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountants: Sequence[str] | None = None,
    max_examples_per_user: int | None = None,
) -> PrivacyReport:
    """ε at δ for T steps of Poisson-sampled (q) Gaussian (σ) releases, by each accountant, plus the
    conservative shuffled-order ε (RDP, each example once per epoch) and, when ``max_examples_per_user`` is
    given, the user-level ε via group privacy (from the RDP accountant). ``accountants`` defaults to
    :func:`available_accountants` (all three where Opacus is installed)."""
    _validate(noise_multiplier, sample_rate, steps, delta)
    if accountants is None:
        accountants = available_accountants()
    if not accountants or any(a not in ACCOUNTANTS for a in accountants):
        raise ValueError(f"accountants must be a non-empty subset of {ACCOUNTANTS}, got {tuple(accountants)!r}")
    if max_examples_per_user is not None:
        if not _is_int(max_examples_per_user) or max_examples_per_user < 1:
            raise ValueError(f"max_examples_per_user must be an integer >= 1 or None, got {max_examples_per_user!r}")
        max_examples_per_user = int(max_examples_per_user)
    steps = int(steps)
    event = dpsgd_event(noise_multiplier, sample_rate, steps)
    composed = {a: _composed(event, a) for a in dict.fromkeys(accountants) if a != "prv"}
    eps = {a: float(acc.get_epsilon(delta)) for a, acc in composed.items()}
    if "prv" in accountants:
        eps["prv"] = _opacus_epsilon([(noise_multiplier, sample_rate, steps)], delta)
    eps = {a: eps[a] for a in dict.fromkeys(accountants)}
    epochs = steps * sample_rate
    n_epochs = max(1, math.ceil(epochs - 1e-9))
    shuffled = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), n_epochs)
    eps_shuffled = _epsilon_of(shuffled, delta, "rdp")
    user_eps: dict[str, float] = {}
    user_shuffled = None
    if max_examples_per_user is not None:
        k = max_examples_per_user
        # RDP only: PLD's tails are truncated, so its ε at the tiny δ' group privacy needs is often inf.
        rdp_acc = composed.get("rdp") or _composed(event, "rdp")
        user_eps["rdp"] = _group_epsilon(lambda d: float(rdp_acc.get_epsilon(d)), k, delta)
        # Shuffled: a user's ≤ k examples fall in ≤ k batches per epoch; sensitivity k·C is the same as σ/k.
        user_shuffled = _epsilon_of(
            dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier / k), n_epochs), delta, "rdp"
        )
    return PrivacyReport(
        epsilon=eps,
        noise_multiplier=float(noise_multiplier),
        sample_rate=float(sample_rate),
        steps=int(steps),
        delta=float(delta),
        epochs=float(epochs),
        epsilon_shuffled=eps_shuffled,
        max_examples_per_user=max_examples_per_user,
        user_epsilon=user_eps,
        user_epsilon_shuffled=user_shuffled,
        versions=_versions(),
    )


_SIGMA_MIN, _SIGMA_MAX = 1e-2, 1e6  # the σ range calibration searches
_PLD_SIGMA_MIN = 0.3  # below this a PLD at 1e-4 discretization gets too large to build in reasonable time


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Smallest σ (RDP: to 1e-4, PLD: to 2e-3 absolute) whose T Poisson-sampled steps spend at most
    ``target_epsilon`` at δ. A target no σ in [0.01, 1e6] meets (or, for PLD, one that needs σ < 0.3) is a
    ValueError that says which way to move, never a raw root-finding error."""
    if not (_is_real(target_epsilon) and 0 < target_epsilon < float("inf")):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    _validate(1.0, sample_rate, steps, delta)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld' for calibration, got {accountant!r}")
    steps = int(steps)
    setting = f"(δ = {delta:g}, q = {sample_rate:g}, T = {steps})"

    def eps_at(sigma: float, name: str) -> float:
        return _epsilon_of(dpsgd_event(sigma, sample_rate, steps), delta, name)

    if eps_at(_SIGMA_MIN, "rdp") <= target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon:g} is met by every σ >= {_SIGMA_MIN:g} {setting}; a smaller σ is no "
            "meaningful privacy. Lower target_epsilon, or give the noise multiplier directly"
        )
    if eps_at(_SIGMA_MAX, "rdp") > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon:g} is out of reach {setting}: even σ = {_SIGMA_MAX:g} spends more. "
            "Raise target_epsilon or delta, or train fewer steps / with a smaller sample rate"
        )

    def calibrate(name: str, lo: float, hi: float) -> float:
        with _quiet_absl():
            try:
                return dp_accounting.calibrate_dp_mechanism(
                    make_fresh_accountant=lambda: _accountant(name),
                    make_event_from_param=lambda s: dpsgd_event(s, sample_rate, steps),
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    bracket_interval=dp_accounting.ExplicitBracketInterval(lo, hi),
                    tol=1e-4 if name == "rdp" else 2e-3,
                )
            except (ValueError, RuntimeError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as err:
                raise ValueError(
                    f"{name.upper()} calibration failed for target_epsilon={target_epsilon:g} {setting}: {err}"
                ) from err

    sigma = calibrate("rdp", _SIGMA_MIN, _SIGMA_MAX)
    if accountant == "pld":
        # PLD is the tighter accountant, so its σ lies a few percent below RDP's: bracket it there.
        if sigma < _PLD_SIGMA_MIN / 0.8:
            raise ValueError(
                f"PLD calibration needs σ below {_PLD_SIGMA_MIN / 0.8:.3g} here (RDP gives σ = {sigma:.4g} "
                f"{setting}), where building the PLD is impractically slow; use accountant='rdp' (its σ is valid "
                "and a few percent larger)"
            )
        lo = 0.8 * sigma
        while eps_at(lo, "pld") <= target_epsilon:
            if lo < 0.2 * sigma or lo < _PLD_SIGMA_MIN:
                raise ValueError(
                    f"PLD calibration found no σ in [{lo:.3g}, {sigma:.3g}] for target_epsilon={target_epsilon:g} "
                    f"{setting}; use accountant='rdp'"
                )
            lo *= 0.8
        sigma = calibrate("pld", lo, sigma * 1.05)
    return float(sigma)


def epsilon_curve(
    noise_multiplier: float,
    sample_rate: float,
    steps: Sequence[int],
    delta: float,
    accountant: str = "rdp",
) -> list[float]:
    """ε at δ after each step count in ``steps`` (for ε-vs-steps/epochs plots)."""
    return [epsilon(noise_multiplier, sample_rate, int(t), delta, accountant) for t in steps]

