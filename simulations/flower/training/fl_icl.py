"""fl-icl: in-context linear regression trained federatedly through Flower, against central training.

Each client draws prompts whose inputs have its own covariance (condition numbers spread log-uniformly over
[1, kappa] across clients: the task-diversity setting of the ICL experiments, split by client). FedAvg through the
Message-API apps trains the shared core's `LinearAttention` (one restricted layer: the preconditioned-GD class)
with local steps of the shared Trainer; the central model is the same model trained by the same Trainer on the
pooled mixture with the same number of prompts seen. The claim: federation costs at most 1.5x in normalized ICL
error (mean squared query error / mean squared label, on every client's distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "fl-icl"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: 20 clients, 10 per round, 30 rounds of 10 local steps (22 s on this 2-core box)."""

    population: int = param(20, "clients (one covariance each)", bounds="[2, 1000]")
    cohort: float = param(10.0, "expected clients per round (Poisson, q = cohort / population)", bounds="(0, 1000]")
    rounds: int = param(30, "federated rounds", bounds="[1, 10000]")
    local_steps: int = param(10, "local Trainer steps per round", bounds="[1, 10000]")
    batch_size: int = param(32, "prompts per step", bounds="[1, 4096]")
    local_lr: float = param(3e-2, "local AdamW lr", bounds="(0, 10]")
    d: int = param(5, "input dimension", bounds="[1, 100]")
    n: int = param(20, "context points per prompt", bounds="[1, 1000]")
    kappa: float = param(10.0, "largest condition number across clients", bounds="[1, 1e6]")
    engine: str = param("flower", "'flower' (run_simulation, Ray) or 'inprocess' (the same math without Flower)",
                        choices=("flower", "inprocess"))
    seed: int = param(0, "seed of data, sampling and initialization", bounds="[0, 2147483647]")

    def check(self) -> None:
        if self.cohort > self.population:
            raise ValueError(f"cohort must be <= population={self.population}, got {self.cohort}")

    @classmethod
    def smoke(cls) -> Config:
        """6 clients, 3 per round, 8 rounds (under a minute, most of it Ray start-up)."""
        return cls(population=6, cohort=3.0, rounds=8)

    def settings(self):
        from simulations.flower.training.settings import FLSettings

        return FLSettings(workload="icl", population=self.population, cohort=self.cohort, rounds=self.rounds,
                          local_steps=self.local_steps, batch_size=self.batch_size, local_lr=self.local_lr,
                          icl_d=self.d, icl_n=self.n, icl_kappa=self.kappa, seed=self.seed,
                          eval_every=max(1, self.rounds // 10))


def _central(run, steps: int) -> float:
    from models.train import TrainConfig, Trainer
    from simulations.flower.training.workloads import ICLRegression

    w: ICLRegression = run.workload
    s = run.settings
    cfg = TrainConfig(steps=steps, lr=s.local_lr, schedule="constant", grad_clip=1.0, log_every=0, progress=False,
                      amp=False)
    trainer = Trainer(w.make_model(), w.central_batches(), w.loss, cfg)
    trainer.fit()
    return w.evaluate(trainer.model)["val_loss"]


def run(config: Config, out_dir: Path) -> dict:
    from simulations.flower.training.engine import FederatedRun

    s = config.settings()
    if config.engine == "flower":
        from simulations.flower.training.simulate import run_flower

        fed = run_flower(s, total_timeout=1800)
    else:
        fed = FederatedRun(s)
        fed.run_inprocess()
    start = FederatedRun(s).evaluate()["val_loss"]
    client_steps = int(sum(h["survived"] for h in fed.history)) * s.local_steps
    central = _central(fed, client_steps)
    hist = [h for h in fed.history if "val_loss" in h]
    metrics = {
        "federated_error": hist[-1]["val_loss"], "central_error": central, "initial_error": start,
        "ratio": hist[-1]["val_loss"] / central, "client_steps": client_steps,
        "prompts_seen": client_steps * s.batch_size, "engine": config.engine,
        "curve": {"round": [h["round"] for h in hist], "val_loss": [h["val_loss"] for h in hist]},
        "kappas": [float(k) for k in fed.workload.kappas], "failures": sum(len(h["failures"]) for h in fed.history),
    }
    fig, axes = new_figure(1, 1)
    ax = axes[0][0]
    ax.plot(metrics["curve"]["round"], metrics["curve"]["val_loss"], "o-", label="FedAvg (Flower)")
    ax.axhline(central, color="k", ls="--", label=f"central, same prompts seen ({central:.3f})")
    ax.axhline(1.5 * central, color="r", ls=":", label="1.5 x central (claim)")
    ax.set(xlabel="round", ylabel="normalized ICL error", yscale="log",
           title=f"fl-icl: d={s.icl_d}, n={s.icl_n}, kappa in [1, {s.icl_kappa:g}], {s.population} clients")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "fl_icl.png")
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def claims(result: dict) -> list[Claim]:
    """The federated model within 1.5x of the central one (strict); both learned: error below the initial
    model's (sanity of the training, strict)."""
    m = result["metrics"]
    return [
        Claim("federated normalized ICL error <= 1.5 x the central model's (same prompts seen)", m["ratio"], 1.5,
              m["ratio"] <= 1.5),
        Claim("the federated model learned: error < 0.5 x the initial model's", m["federated_error"],
              0.5 * m["initial_error"], m["federated_error"] < 0.5 * m["initial_error"]),
    ]


register(NAME, Config, run, claims, __doc__ or "", paper="McMahan et al. 2017 (FedAvg); Garg et al. 2022 (ICL)")
