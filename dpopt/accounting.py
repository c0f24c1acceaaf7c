"""Privacy accounting for DP-SGD-style training (DP-SGD, DP-Adam, DP²: one subsampled Gaussian per step).

Everything is built on Google's ``dp_accounting`` events; no formula here is hand-rolled except the textbook
group-privacy lemma (k·ε, k·e^{(k-1)ε}·δ) used for the user-level figure:

* Poisson sampling: ``SelfComposed(PoissonSampled(q, Gaussian(σ)), T)``, accounted with RDP (orders as in
  Opacus' RDP accountant, so both agree) and/or PLD.
* Shuffled, each example once per epoch (the conservative figure of TF Privacy's privacy statement): no
  amplification, an example is in one batch per epoch, so ``SelfComposed(Gaussian(σ), ceil(T·q))``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    "epsilon_curve",
    "BudgetGuard",
    "BudgetExhaustedError",
]

ACCOUNTANTS = ("rdp", "pld")
PROTECTED = "example-level, add/remove adjacency"
# Opacus' RDPAccountant.DEFAULT_ALPHAS: using the same orders makes our RDP ε equal Opacus' for one history.
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
PLD_DISCRETIZATION = 1e-4


def _validate(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not (noise_multiplier > 0 and noise_multiplier < float("inf")):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _accountant(name: str) -> dp_accounting.PrivacyAccountant:
    if name == "rdp":
        return rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
    if name == "pld":
        return pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")


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
    if accountant == "pld":  # reuse the one-step PLD across calls (curves, the guard's search)
        step = _pld_step(float(noise_multiplier), float(sample_rate))
        return float(step.self_compose(steps).get_epsilon_for_delta(delta))
    return _epsilon_of(dpsgd_event(noise_multiplier, sample_rate, steps), delta, accountant)


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
    accountants: Sequence[str] = ("rdp", "pld"),
    max_examples_per_user: int | None = None,
) -> PrivacyReport:
    """ε at δ for T steps of Poisson-sampled (q) Gaussian (σ) releases, by each accountant, plus the
    conservative shuffled-order ε (RDP, each example once per epoch) and, when ``max_examples_per_user`` is
    given, the user-level ε via group privacy (from the RDP accountant)."""
    _validate(noise_multiplier, sample_rate, steps, delta)
    if not accountants or any(a not in ACCOUNTANTS for a in accountants):
        raise ValueError(f"accountants must be a non-empty subset of {ACCOUNTANTS}, got {tuple(accountants)!r}")
    if max_examples_per_user is not None and (
        isinstance(max_examples_per_user, bool) or not isinstance(max_examples_per_user, int) or max_examples_per_user < 1
    ):
        raise ValueError(f"max_examples_per_user must be an integer >= 1 or None, got {max_examples_per_user!r}")
    event = dpsgd_event(noise_multiplier, sample_rate, steps)
    composed = {a: _composed(event, a) for a in dict.fromkeys(accountants)}
    eps = {a: float(acc.get_epsilon(delta)) for a, acc in composed.items()}
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


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Smallest σ (RDP: to 1e-4, PLD: to 2e-3 absolute) whose T Poisson-sampled steps spend at most ``target_epsilon`` at δ."""
    if not (target_epsilon > 0 and target_epsilon < float("inf")):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    _validate(1.0, sample_rate, steps, delta)
    _accountant(accountant)
    def calibrate(name: str, bracket: dp_accounting.BracketInterval) -> float:
        with _quiet_absl():
            return dp_accounting.calibrate_dp_mechanism(
                make_fresh_accountant=lambda: _accountant(name),
                make_event_from_param=lambda s: dpsgd_event(s, sample_rate, steps),
                target_epsilon=target_epsilon,
                target_delta=delta,
                bracket_interval=bracket,
                tol=1e-4 if name == "rdp" else 2e-3,
            )

    # RDP is cheap at any σ; PLD at tiny σ builds huge distributions, so bracket PLD's σ just below RDP's
    # (PLD is the tighter accountant, so its σ is smaller, by a few percent in practice).
    sigma = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(1e-2, 1.0))
    if accountant == "pld":
        lo = 0.8 * sigma
        while _epsilon_of(dpsgd_event(lo, sample_rate, steps), delta, "pld") <= target_epsilon:
            if lo < 0.2 * sigma:
                raise ValueError(f"PLD calibration found no σ in [{lo:.3g}, {sigma:.3g}] for target_epsilon")
            lo *= 0.8
        hi = sigma * 1.05
        sigma = calibrate("pld", dp_accounting.ExplicitBracketInterval(lo, hi))
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


class BudgetGuard:
    """Stops training before the target ε is exceeded.

    Call :meth:`step` once before each optimizer step (or :meth:`attach` it to an Opacus ``DPOptimizer``).
    The largest admissible step count is found once by bisection (ε is monotone in T), so a step costs an
    integer compare. When the next step would push ε past ``target_epsilon`` it raises
    :class:`BudgetExhaustedError` with the ε actually reached.
    """

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        accountant: str = "rdp",
        steps_taken: int = 0,
    ) -> None:
        if not (target_epsilon > 0 and target_epsilon < float("inf")):
            raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
        _validate(noise_multiplier, sample_rate, 1, delta)
        _accountant(accountant)
        if steps_taken < 0:
            raise ValueError(f"steps_taken must be >= 0, got {steps_taken!r}")
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.accountant = accountant
        self.steps_taken = int(steps_taken)
        self.max_steps = self._max_steps()

    def _eps(self, steps: int) -> float:
        return epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)

    def _max_steps(self) -> int:
        if self._eps(1) > self.target_epsilon:
            return 0
        lo, hi = 1, 2  # ε(lo) <= target
        while self._eps(hi) <= self.target_epsilon:
            lo, hi = hi, hi * 2
            if hi > 10**9:
                return 10**9
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._eps(mid) <= self.target_epsilon:
                lo = mid
            else:
                hi = mid
        return lo

    @property
    def remaining(self) -> int:
        """Steps that can still be taken without exceeding the target."""
        return max(0, self.max_steps - self.steps_taken)

    def epsilon_spent(self) -> float:
        """ε at δ after the steps taken so far (0 before the first)."""
        return 0.0 if self.steps_taken == 0 else self._eps(self.steps_taken)

    def step(self) -> None:
        """Admit one more step, or raise BudgetExhaustedError if it would exceed the target ε."""
        if self.steps_taken + 1 > self.max_steps:
            spent = self.epsilon_spent()
            raise BudgetExhaustedError(
                f"privacy budget reached: {self.steps_taken} steps spent ε={spent:.4f} at δ={self.delta:g} "
                f"({self.accountant}); one more step would exceed target ε={self.target_epsilon:g}. Training stopped.",
                epsilon_spent=spent,
                steps_taken=self.steps_taken,
            )
        self.steps_taken += 1

    def attach(self, optimizer: object) -> None:
        """Chain into an Opacus DPOptimizer's step hook so each real (non-skipped) step is checked before
        the accountant records it and before the model is updated."""
        previous = getattr(optimizer, "step_hook", None)

        def hook(opt: object) -> None:
            self.step()
            if previous is not None:
                previous(opt)

        optimizer.attach_step_hook(hook)  # type: ignore[attr-defined]

    def state_dict(self) -> dict:
        """Checkpointable state (the step count; the rest is configuration)."""
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.steps_taken = int(state["steps_taken"])
