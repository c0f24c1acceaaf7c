"""The server's side of federated training, independent of the transport: sample a cohort (Poisson), collect the
clients' updates, privatize the aggregate (central Gaussian or the distributed-DP exact sum), take a server-optimizer
step, account, checkpoint. `FederatedRun.run_inprocess` drives it with the clients trained in this process (the
same math the Flower apps will run, without Flower: the benchmark's peer).

Guarantees (client level, add/remove one client's whole update; delta = settings.delta):
- ``dp="central"``: the server is trusted; each client clips its update to C, the server adds N(0, sigma^2 C^2) to
  the sum and divides by the *expected* cohort q N. Against observers of the released models: ``epsilon`` is
  the Poisson-subsampled Gaussian (dpopt.accounting); ``epsilon_no_amplification`` assumes every client is in
  every round (no sampling secrecy).
- ``dp="distributed"``: see `ddp`; the server sees only the exact integer sum. ``epsilon`` is against observers
  of the released models (Zhu-Wang subsampled Skellam RDP); ``epsilon_vs_server`` against the server itself.
Every round that ran is accounted, released or not (conservative).
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from simulations.flower.training.ddp import DDPParams, calibrate_ddp, clip_update, decode_sum, encode
from simulations.flower.training.local import local_update
from simulations.flower.training.sampling import ClientSampler
from simulations.flower.training.server_opt import make_server_optimizer
from simulations.flower.training.settings import FLSettings
from simulations.flower.training.workloads import flat_params, make_workload

__all__ = ["FederatedRun", "InjectedClientFailure"]


class InjectedClientFailure(RuntimeError):
    """A client told by `fail_clients` to fail in this round."""


class FederatedRun:
    """One run's server state: the global vector, the server optimizer, the sampler, the privacy state, the log."""

    def __init__(self, settings: FLSettings) -> None:
        self.settings = s = settings
        self.workload = make_workload(s)
        self.x = flat_params(self.workload.make_model())
        self.population = self.workload.population
        self.q = s.q(self.population)
        self.sampler = ClientSampler(self.population, self.q, s.seed, s.sampling)
        self.opt = make_server_optimizer(s.server_opt, self.x.size, lr=s.server_lr, lr2=s.server_lr2 or None,
                                         delay=s.dp2_delay, beta=s.dp2_beta, eps=s.dp2_eps, tau=s.adam_tau)
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.example_steps: dict[int, list[float]] = {}  # example-level DP: cid -> [q, sigma, steps so far]
        self.remote = False  # True in a Flower client's copy (fault injection stalls for real there)
        self.noise_rng = np.random.default_rng([s.seed, 0xD15E])  # the trusted server's (central DP) noise
        self.sigma = 0.0
        self.ddp: DDPParams | None = None
        expected = self.q * self.population
        if s.dp == "central":
            from dpopt.accounting import calibrate_noise

            self.sigma = s.noise_multiplier or calibrate_noise(s.target_epsilon, s.delta, self.q, s.rounds)
        elif s.dp == "distributed":
            cap = min(self.population, math.ceil(expected + 8 * math.sqrt(expected) + 8))
            floor = max(1, math.ceil(s.min_survivors * expected))
            self.ddp = calibrate_ddp(s.target_epsilon, s.delta, s.rounds, self.q, dim=self.x.size, clip=s.clip,
                                     scale=s.ddp_scale / s.clip, min_survivors=floor, max_clients=cap)

    # --------------------------------------------------------------------------------------------- privacy
    def privacy(self) -> dict[str, Any]:
        """ε so far, both ways (see the module docstring), and the mechanism's parameters."""
        s, t = self.settings, max(self.round, 1)
        out: dict[str, Any] = {"dp": s.dp, "delta": s.delta, "q": self.q, "rounds": self.round,
                               "protected": "one client's whole update per round (add/remove one client)"}
        if s.dp == "central":
            from dpopt.accounting import epsilon

            out.update(noise_multiplier=self.sigma, clip=s.clip,
                       epsilon=epsilon(self.sigma, self.q, t, s.delta) if self.round else 0.0,
                       epsilon_no_amplification=epsilon(self.sigma, 1.0, t, s.delta) if self.round else 0.0,
                       adversary="observers of the released models (the server is trusted)")
        elif s.dp == "distributed":
            p = self.ddp
            out.update(clip=s.clip, scale=p.scale, skellam_variance=p.variance, noise_std=p.noise_std,
                       l2_sensitivity=p.l2_bound, min_survivors=p.min_survivors,
                       epsilon=p.epsilon(t, s.delta, self.q) if self.round else 0.0,
                       epsilon_vs_server=p.epsilon(t, s.delta) if self.round else 0.0,
                       adversary="the server (sees only exact SecAgg+ sums) and observers of the released models")
        if s.example_dp:
            out["example_level"] = self.example_privacy()
        return out

    def example_privacy(self) -> dict[str, Any]:
        """Example-level DP on the clients: each client's epsilon, composed over the rounds it took part in from
        the (q, sigma, steps) it reported (DP-SGD's subsampled Gaussian, through dpopt.accounting)."""
        from dpopt.accounting import epsilon

        s = self.settings
        eps = {cid: epsilon(sig, q, int(steps), s.delta) for cid, (q, sig, steps) in sorted(self.example_steps.items())}
        vals = list(eps.values())
        return {"protected": f"one training window ({s.block_size + 1} tokens) of one client's text",
                "adversary": "anyone who sees the client's update, the server included (no trust needed)",
                "optimizer": s.example_optimizer, "noise_multiplier": s.example_noise, "clip": s.example_clip,
                "delta": s.delta, "clients": len(eps), "per_client_epsilon": {str(k): v for k, v in eps.items()},
                "max_epsilon": max(vals) if vals else 0.0,
                "median_epsilon": float(np.median(vals)) if vals else 0.0}

    # --------------------------------------------------------------------------------------------- rounds
    def client_upload(self, cid: int, t: int) -> tuple[np.ndarray, dict[str, float]]:
        """What client `cid` sends in round t (the ClientApp's work): its update, clipped for client-level DP, or
        for distributed DP its encoded integer vector."""
        s = self.settings
        if (cid, t) in s.failures():
            raise InjectedClientFailure(f"client {cid} failed in round {t} (injected)")
        if (cid, t) in s.hangs():
            if not self.remote:
                raise TimeoutError(f"client {cid} stalled past timeout={s.timeout} s in round {t} (injected)")
            time.sleep(s.timeout + 5.0)  # a Flower client: the server's wait runs out first
        delta, metrics = local_update(self.workload, s, self.x, cid, t)
        if s.dp == "central":
            delta, metrics["update_norm"] = clip_update(delta, s.clip)
        elif s.dp == "distributed":
            seed = None if s.simulate_noise_seed < 0 else [s.simulate_noise_seed, t, cid]
            metrics["update_norm"] = float(np.linalg.norm(delta))
            delta = encode(delta, self.ddp, self.rotation_seed(t), noise_rng=seed)
        return delta, metrics

    def rotation_seed(self, t: int) -> int:
        return int(np.random.SeedSequence([self.settings.seed, 0x20AD, t]).generate_state(1)[0])

    def finish_round(self, t: int, uploads: list[np.ndarray], failures: list[str], sampled: int,
                     metrics: list[dict[str, float]], *, survived: int | None = None,
                     skipped: str | None = None) -> dict[str, Any]:
        """Aggregate the round's uploads (already summed by SecAgg+ when one array is given for distributed DP),
        step the server optimizer, log. A round below min_train_nodes (or the noise floor) changes nothing; so
        does a round the transport already refused to release (`skipped`, with its `survived` count)."""
        s = self.settings
        if survived is None:
            survived = len(uploads) if s.dp != "distributed" or len(uploads) != 1 else sampled - len(failures)
        rec: dict[str, Any] = {"round": t, "sampled": sampled, "survived": survived, "failures": failures}
        floor = self.ddp.min_survivors if self.ddp else 0
        if skipped:
            rec["skipped"] = skipped
        elif survived < max(s.min_train_nodes, floor) or not uploads:
            rec["skipped"] = (f"round {t}: {survived} of {sampled} clients survived, below "
                              f"{'the noise floor ' + str(floor) if survived < floor else 'min_train_nodes'}")
        else:
            expected = self.q * self.population
            if s.dp == "none":
                agg = np.mean(uploads, axis=0)
            elif s.dp == "central":
                total = np.sum(uploads, axis=0) + self.noise_rng.normal(0.0, self.sigma * s.clip, self.x.size)
                agg = total / expected
            else:
                total = uploads[0] if len(uploads) == 1 else np.sum(uploads, axis=0)
                agg = decode_sum(np.asarray(total, dtype=np.int64), self.ddp, self.rotation_seed(t)) / expected
            self.x = self.opt.step(self.x, agg, t)
            rec["update_norm"] = float(np.linalg.norm(agg))
        for m in metrics:  # every round that ran is accounted for the clients that trained in it
            if "example_q" in m:
                acc = self.example_steps.setdefault(int(m["cid"]), [float(m["example_q"]),
                                                                    float(m["example_sigma"]), 0.0])
                acc[2] += float(m["example_steps"])
        losses = [m["train_loss"] for m in metrics if "train_loss" in m]
        rec["train_loss"] = float(np.mean(losses)) if losses else float("nan")
        rec["time"] = time.perf_counter()  # when the round finished (benchmarks: per-round wall time)
        self.round = t
        if s.eval_every and (t % s.eval_every == 0 or t == s.rounds):
            rec.update(self.evaluate())
        self.history.append(rec)
        if s.ckpt_every and t % s.ckpt_every == 0:
            self.save(Path(s.ckpt_dir) / "server.ckpt")
        return rec

    def evaluate(self) -> dict[str, float]:
        from simulations.flower.training.workloads import set_flat_params

        model = self.workload.make_model()
        set_flat_params(model, self.x)
        return self.workload.evaluate(model)

    def run_inprocess(self, until: int | None = None) -> list[dict[str, Any]]:
        """Rounds round+1 .. until (default: all), the clients trained here, one after another."""
        for t in range(self.round + 1, (until or self.settings.rounds) + 1):
            cohort = self.sampler.cohort(t)
            uploads, metrics, failures = [], [], []
            for cid in cohort:
                try:
                    u, m = self.client_upload(int(cid), t)
                except Exception as e:  # a failing client is a dropout, reported with its reason
                    failures.append(f"client {int(cid)}: {type(e).__name__}: {e}")
                    continue
                uploads.append(u)
                metrics.append(m)
            if self.settings.dp == "distributed" and uploads:
                uploads = [np.sum(uploads, axis=0)]  # what SecAgg+ hands the server: the exact sum only
            self.finish_round(t, uploads, failures, len(cohort), metrics)
        return self.history

    # --------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"model_key": self.settings.model_key(), "round": self.round, "x": self.x.copy(),
                "opt": self.opt.state_dict(), "history": list(self.history),
                "noise_rng": self.noise_rng.bit_generator.state, "settings": self.settings.to_run_config(),
                "example_steps": {k: list(v) for k, v in self.example_steps.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.settings.model_key()
        diff = {k: (state["model_key"].get(k), v) for k, v in mine.items() if state["model_key"].get(k) != v}
        if diff:
            raise ValueError(f"the checkpoint's model/workload does not match this run: {diff} (checkpoint, run)")
        self.round, self.x, self.history = int(state["round"]), np.asarray(state["x"]), list(state["history"])
        self.opt.load_state_dict(state["opt"])
        self.noise_rng.bit_generator.state = state["noise_rng"]
        self.example_steps = {int(k): list(v) for k, v in state.get("example_steps", {}).items()}

    def save(self, path: Path) -> None:
        """Write the server state atomically (a crash mid-write keeps the previous checkpoint)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(self.state_dict()))
        tmp.replace(path)

    def resume(self, path: Path) -> bool:
        """Load `path` if it exists (True), else start fresh (False)."""
        if not Path(path).is_file():
            return False
        self.load_state_dict(pickle.loads(Path(path).read_bytes()))
        return True
