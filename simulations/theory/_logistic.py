"""Full-batch GD on a small linearly separable dataset, for many stepsizes at once (logistic or exponential loss).

Labels are folded into the points (z_i = y_i x_i), so the loss is L(w) = mean_i ell(<z_i, w>) with
ell(m) = log(1 + e^-m) (logistic) or e^-m (exponential). The default dataset has margin gamma along e1 with
support vectors (gamma, +1) and (gamma, -1): the max-margin direction is e1, and the orthogonal coordinate has
a well-defined limit (0, by the symmetry of the support vectors). Two more points (2 gamma, -0.5) and
(3 gamma, 0.7) break the symmetry of the whole set, so that GD's iterate does move off the e1 axis (the symmetric
two-point set keeps w_2 = 0 and nothing oscillates).
"""

from __future__ import annotations

import numpy as np


def margin_dataset(gamma: float = 0.1) -> np.ndarray:
    """The folded points z_i = y_i x_i (n x 2); max-margin direction e1 with margin `gamma`."""
    return np.array([[gamma, 1.0], [gamma, -1.0], [2 * gamma, -0.5], [3 * gamma, 0.7]])


def smoothness_at_zero(z: np.ndarray) -> float:
    """beta = lambda_max of the logistic loss Hessian at w = 0, (1/4) lambda_max(mean z z^T): GD with a stepsize
    below 2/beta decreases the loss monotonically from 0 (the classical stable regime)."""
    return float(np.linalg.eigvalsh(z.T @ z / len(z) / 4).max())


def losses(w: np.ndarray, z: np.ndarray, kind: str = "logistic") -> np.ndarray:
    """Mean loss of each row of `w` (E x 2): logistic log(1+e^-m) (computed stably) or exponential e^-m."""
    m = w @ z.T
    if kind == "logistic":
        return np.logaddexp(0.0, -m).mean(1)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(-m).mean(1)


def gd(z: np.ndarray, etas: np.ndarray, steps: int, *, kind: str = "logistic",
       record: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run GD from w = 0 with each stepsize in `etas` (as one batch) for `steps` steps.

    Returns "loss" (E x steps+1, loss at every step incl. step 0) and, when `record` (sorted step indices) is
    given, "w" (len(record) x E x 2), the iterates at those steps. Non-finite values (exponential loss blowing
    up) are kept as inf/nan."""
    etas = np.asarray(etas, float)
    w = np.zeros((len(etas), z.shape[1]))
    loss = np.empty((len(etas), steps + 1))
    rec = list(record) if record is not None else []
    ws, k = [], 0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps + 1):
            m = w @ z.T
            if kind == "logistic":
                loss[:, t] = np.logaddexp(0.0, -m).mean(1)
                s = 0.5 * (1.0 - np.tanh(0.5 * m))  # sigmoid(-m), stable for large |m|
            else:
                s = np.exp(-m)
                loss[:, t] = s.mean(1)
            while k < len(rec) and rec[k] == t:
                ws.append(w.copy())
                k += 1
            if t < steps:
                w = w + (etas[:, None] / len(z)) * (s @ z)
    out = {"loss": loss}
    if rec:
        out["w"] = np.array(ws)
    return out


def last_increase(loss: np.ndarray) -> np.ndarray:
    """Per row, the last step t with loss[t] > loss[t-1] (0 when the loss never increases): the end of the
    oscillatory phase."""
    up = np.diff(loss, axis=1) > 0
    idx = np.where(up.any(1), up.shape[1] - np.argmax(up[:, ::-1], axis=1), 0)
    return idx
