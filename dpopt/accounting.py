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
    "PROTECTED",
    "PrivacyReport",
    "privacy_report",
    "calibrate_noise",
    "epsilon",
    "history_epsilon",
    "epsilon_curve",
    "BudgetGuard",
    "BudgetExhaustedError",
]

ACCOUNTANTS = ("rdp", "pld", "prv")
REPORT_ACCOUNTANTS = ACCOUNTANTS
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


def _opacus_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε of ``history`` by Opacus' PRV accountant (the default of Opacus' and dpopt's PrivacyEngine)."""
    from opacus.accountants import PRVAccountant

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
    accountants: Sequence[str] = REPORT_ACCOUNTANTS,
    max_examples_per_user: int | None = None,
) -> PrivacyReport:
    """ε at δ for T steps of Poisson-sampled (q) Gaussian (σ) releases, by each accountant, plus the
    conservative shuffled-order ε (RDP, each example once per epoch) and, when ``max_examples_per_user`` is
    given, the user-level ε via group privacy (from the RDP accountant)."""
    _validate(noise_multiplier, sample_rate, steps, delta)
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


class BudgetExhaustedError(RuntimeError):
    """Raised by :class:`BudgetGuard` instead of taking a step that would exceed the target ε."""

    def __init__(self, message: str, epsilon_spent: float, steps_taken: int) -> None:
        super().__init__(message)
        self.epsilon_spent = epsilon_spent
        self.steps_taken = steps_taken


History = list[tuple[float, float, int]]


def _merge(history: History, noise_multiplier: float, sample_rate: float, count: int = 1) -> None:
    """Append ``count`` steps at (σ, q) the way Opacus' accountants do (merged into a matching last entry)."""
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        history[-1] = (noise_multiplier, sample_rate, history[-1][2] + count)
    else:
        history.append((noise_multiplier, sample_rate, count))


class BudgetGuard:
    """Stops training before the target ε is exceeded, computing ε from the actual training history.

    The history is the list of ``(σ, q, steps)`` entries of the steps taken: the attached engine's accountant
    history (``engine=``: the engine's own record, so a noise or clip scheduler that changes σ is seen and a
    resumed run that restored the engine's accountant continues from the ε already spent), or, without an
    engine, the guard's own record of the steps it admitted (checkpoint it with :meth:`state_dict`).

    Call :meth:`step` once before each optimizer step, or :meth:`attach` the guard to an Opacus ``DPOptimizer``
    (it then reads σ from the optimizer at every step and checks before the accountant records the step).
    When the next step would push ε past ``target_epsilon`` it raises :class:`BudgetExhaustedError` with the ε
    actually reached.

    ε is computed with ``accountant`` ("rdp", "pld" or "prv"; default: the engine's, else "prv", Opacus'
    default). For speed the guard finds, for the current (σ, q), how many more steps fit the budget (by
    bisection: ε is monotone in the step count) and re-plans only when σ or q changes, so a step costs an
    integer compare. A re-plan costs ~30 ε evaluations: well under a second with RDP, ~30 s with PRV at the
    DP² paper's IMDB size; with a noise schedule that changes σ often, prefer accountant="rdp" (its ε is an
    upper bound of PRV's, so the guard stops a little earlier).
    """

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
        accountant: str | None = None,
        steps_taken: int = 0,
        *,
        engine: Any = None,
    ) -> None:
        if not (_is_real(target_epsilon) and 0 < target_epsilon < float("inf")):
            raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
        if not (_is_real(delta) and 0 < delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if noise_multiplier is not None:
            _validate(noise_multiplier, 1.0, 1, delta)
        if sample_rate is not None:
            _validate(1.0, sample_rate, 1, delta)
        if engine is not None and not hasattr(getattr(engine, "accountant", None), "history"):
            raise ValueError("engine must be an Opacus/dpopt PrivacyEngine (with an accountant holding a history)")
        if accountant is None:
            accountant = engine.accountant.mechanism() if engine is not None else "prv"
        _check_accountant(accountant)
        if not _is_int(steps_taken) or steps_taken < 0:
            raise ValueError(f"steps_taken must be an integer >= 0, got {steps_taken!r}")
        if steps_taken and (noise_multiplier is None or sample_rate is None or engine is not None):
            raise ValueError("steps_taken needs noise_multiplier and sample_rate, and no engine (it holds the history)")
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.noise_multiplier = None if noise_multiplier is None else float(noise_multiplier)
        self.sample_rate = None if sample_rate is None else float(sample_rate)
        self.accountant = accountant
        self.engine = engine
        self._history: History = []
        if steps_taken:
            _merge(self._history, self.noise_multiplier, self.sample_rate, int(steps_taken))
        self._plans: dict[tuple, int] = {}

    # ------------------------------------------------------------------------------------------ the record
    @property
    def history(self) -> History:
        """The steps taken so far, ``[(σ, q, steps), ...]`` (the engine's record when attached to one)."""
        if self.engine is not None:
            return [(float(a), float(b), int(c)) for a, b, c in self.engine.accountant.history]
        return list(self._history)

    @property
    def steps_taken(self) -> int:
        """Steps taken so far (all σ)."""
        return sum(t for _, _, t in self.history)

    def epsilon_spent(self) -> float:
        """ε at δ of the steps taken so far (0 before the first)."""
        return history_epsilon(self.history, self.delta, self.accountant)

    def _eps(self, base: History, noise_multiplier: float, sample_rate: float, k: int) -> float:
        hist = list(base)
        _merge(hist, noise_multiplier, sample_rate, k)
        return history_epsilon(hist, self.delta, self.accountant)

    def _capacity(self, base: History, noise_multiplier: float, sample_rate: float) -> int:
        """The largest k such that ``base`` plus k steps at (σ, q) spends at most the target (cached)."""
        key = (tuple(base), noise_multiplier, sample_rate)
        if key not in self._plans:
            def fits(k: int) -> bool:
                try:
                    return self._eps(base, noise_multiplier, sample_rate, k) <= self.target_epsilon
                except ValueError:  # PRV cannot evaluate very long / very noisy-free histories: ε is huge there
                    return False

            if not fits(1):
                cap = 0
            else:
                lo, hi = 1, 2  # fits(lo)
                while fits(hi):
                    lo, hi = hi, hi * 2
                    if hi > 10**9:
                        break
                while hi - lo > 1 and lo < 10**9:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
                cap = lo
            self._plans = {key: cap}  # one plan at a time: the history only grows
        return self._plans[key]

    def _split(self, noise_multiplier: float, sample_rate: float) -> tuple[History, int]:
        """(history before the current run of (σ, q) steps, the length of that run)."""
        hist = self.history
        run = 0
        while hist and hist[-1][0] == noise_multiplier and hist[-1][1] == sample_rate:
            run += hist.pop()[2]
        return hist, run

    def _rate(self, noise_multiplier: float | None, sample_rate: float | None) -> tuple[float, float]:
        sigma = self.noise_multiplier if noise_multiplier is None else float(noise_multiplier)
        q = self.sample_rate if sample_rate is None else float(sample_rate)
        if q is None and self.engine is not None:
            q = getattr(self.engine, "sample_rate", None)
        if sigma is None or q is None:
            raise ValueError(
                "BudgetGuard needs the step's noise_multiplier and sample_rate: give them to the constructor, to "
                "step(), or attach the guard to an optimizer built by dpopt.PrivacyEngine (which records q)"
            )
        _validate(sigma, q, 1, self.delta)
        return float(sigma), float(q)

    @property
    def remaining(self) -> int:
        """Steps at the constructor's (σ, q) that can still be taken without exceeding the target."""
        return self.remaining_at()

    def remaining_at(self, noise_multiplier: float | None = None, sample_rate: float | None = None) -> int:
        """Steps at (σ, q) (default: the constructor's) that can still be taken without exceeding the target."""
        sigma, q = self._rate(noise_multiplier, sample_rate)
        base, run = self._split(sigma, q)
        return max(0, self._capacity(base, sigma, q) - run)

    @property
    def max_steps(self) -> int:
        """Steps at the constructor's (σ, q), counted from an empty history, that fit the target."""
        sigma, q = self._rate(None, None)
        return self._capacity([], sigma, q)

    # ------------------------------------------------------------------------------------------ the check
    def step(self, noise_multiplier: float | None = None, sample_rate: float | None = None) -> None:
        """Admit one more step at (σ, q), or raise BudgetExhaustedError if it would exceed the target ε.

        Without an engine the admitted step is recorded here; with one, the engine's accountant records it."""
        sigma, q = self._rate(noise_multiplier, sample_rate)
        base, run = self._split(sigma, q)
        if run + 1 > self._capacity(base, sigma, q):
            spent = self.epsilon_spent()
            taken = self.steps_taken
            raise BudgetExhaustedError(
                f"privacy budget reached: {taken} steps spent ε={spent:.4f} at δ={self.delta:g} "
                f"({self.accountant}); one more step at σ={sigma:.4g}, q={q:.4g} would exceed target "
                f"ε={self.target_epsilon:g}. Training stopped.",
                epsilon_spent=spent,
                steps_taken=taken,
            )
        if self.engine is None:
            _merge(self._history, sigma, q)

    def attach(self, optimizer: object) -> None:
        """Chain into an Opacus DPOptimizer's step hook so each real (non-skipped) step is checked, with the
        optimizer's current σ, before the accountant records it and before the model is updated."""
        previous = getattr(optimizer, "step_hook", None)

        def hook(opt: object) -> None:
            q = self.sample_rate if self.sample_rate is not None else getattr(self.engine, "sample_rate", None)
            if q is not None:
                try:  # what Opacus' accountant hook records: q × accumulated backward passes
                    q = q * int(opt.accumulated_iterations)  # type: ignore[attr-defined]
                except (ValueError, AttributeError, TypeError):
                    pass
            self.step(noise_multiplier=opt.noise_multiplier, sample_rate=q)  # type: ignore[attr-defined]
            if previous is not None:
                previous(opt)

        optimizer.attach_step_hook(hook)  # type: ignore[attr-defined]

    def state_dict(self) -> dict:
        """Checkpointable state: the guard's own history (empty when an engine holds it) and its target."""
        return {"history": list(self._history), "target_epsilon": self.target_epsilon, "delta": self.delta,
                "accountant": self.accountant}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a different target, δ or accountant is refused)."""
        for key in ("target_epsilon", "delta", "accountant"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"checkpointed BudgetGuard has {key}={state[key]!r}, this one {getattr(self, key)!r}")
        if "history" in state:
            self._history = [(float(a), float(b), int(c)) for a, b, c in state["history"]]
        elif "steps_taken" in state:  # the format before histories
            if self.noise_multiplier is None or self.sample_rate is None:
                raise ValueError("an old BudgetGuard checkpoint (steps only) needs noise_multiplier and sample_rate")
            self._history = []
            if int(state["steps_taken"]):
                _merge(self._history, self.noise_multiplier, self.sample_rate, int(state["steps_taken"]))
        self._plans = {}
