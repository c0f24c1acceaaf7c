"""``BudgetGuard``: stop training before a target ε is exceeded, from the real training history.

ε is composed from the history of ``(σ, q, steps)`` entries (Opacus' accountant format), so a noise schedule, a
clip schedule or a resumed run cannot make the guard under-count (see :func:`dpopt.accounting.history_epsilon`).
"""

from __future__ import annotations

from typing import Any

from dpopt.accounting import _check_accountant, _is_int, _is_real, _validate, history_epsilon

__all__ = ["BudgetGuard", "BudgetExhaustedError"]


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
