"""fl-lm-shakespeare: a character-level GPT trained across Tiny Shakespeare's speaking roles, one client per role.

The natural non-IID partition of LEAF's Shakespeare task: the roles speaking at least 1,000 characters (142), each
role's text split 90/10 into its training and validation parts. The shared core's `models.lm.GPT` (2 layers, width
16, context 32; 7,776 parameters) is trained by local steps of the shared Trainer on each sampled client, under five
server-side treatments at the same number of rounds and Poisson rate q = cohort / 142:

- FedAvg and FedAdam (Flower's update rule; Reddi et al. 2021), non-private;
- DP-FedAvg, client-level central DP (McMahan et al. 2018): each client's update clipped to C, Gaussian noise
  sigma C on the server, sigma calibrated so that the run is (target_epsilon, delta)-DP with Poisson amplification;
- the same DP-FedAvg aggregate fed to the DP² server optimizer (a delayed preconditioner built from the noisy
  aggregates averaged over s rounds, `server_opt.DP2Server`): post-processing, the same epsilon;
- distributed DP: clip, rotate, scale, round, Skellam shares from each client's own CSPRNG, exact integer sum
  (`ddp`); the server never sees one update. Calibrated to the same released-model epsilon (subsampled Skellam RDP,
  Zhu & Wang 2019). With ``engine="flower"`` this arm runs through SecAgg+ (`secagg`: the legacy-path app pair with
  the exact-sum parameters), the others through the Message-API apps.

- example-level DP on the clients (no client-level DP): every client runs DP-SGD (Opacus through dpopt, inside the
  Trainer) on Poisson batches of its own windows, with SGD at `example_lr` (not AdamW); the server
  composes each client's epsilon over the rounds it trained in (one window protected, against anyone who sees
  the client's updates). The GPT here has biases (Opacus' LayerNorm needs them), so it is not the other arms' model:
  its loss is reported, not compared.

Claims (strict at the full default, which was run; observations at the smoke size): non-private FedAvg's
validation loss is below the unigram model's; DP² server optimizer <= DP-FedAvg in validation loss at the same
epsilon; distributed DP within 5 % of central DP's validation loss at the same epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "fl-lm-shakespeare"
ARMS = ("fedavg", "fedadam", "dp-fedavg", "dp2", "distributed", "example-dp")


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: 142 roles, 20 expected per round, 40 rounds of 10 local steps, 6 arms (795 s on this 2-core box
    while two other full runs shared it; 379 s for the first 5 arms alone, before SecAgg+ and example-level DP)."""

    population: int = param(0, "clients (roles); 0: every role with >= 1,000 characters (142)", bounds="[0, 299]")
    cohort: float = param(20.0, "expected clients per round (Poisson)", bounds="(0, 299]")
    rounds: int = param(40, "federated rounds", bounds="[1, 10000]")
    local_steps: int = param(10, "local Trainer steps per round", bounds="[1, 10000]")
    batch_size: int = param(16, "windows per local step", bounds="[1, 4096]")
    local_lr: float = param(3e-3, "local AdamW lr", bounds="(0, 10]")
    fedadam_eta: float = param(0.01, "FedAdam's server lr eta", bounds="(0, 10]")
    clip: float = param(1.0, "client-level clip norm C", bounds="(0, 1e6]")
    target_epsilon: float = param(8.0, "client-level epsilon of the DP arms", bounds="(0, 100]")
    delta: float = param(1e-5, "delta", bounds="(0, 0.1]")
    dp2_delay: int = param(5, "DP² server optimizer: rounds per phase s", bounds="[1, 1000]")
    dp2_lr2: float = param(0.002, "DP² server optimizer: preconditioned-phase lr", bounds="(0, 10]")
    ddp_scale: float = param(1024.0, "distributed DP: s * C, the rounded norm in integer units", bounds="[1, 1e7]")
    min_survivors: float = param(0.8, "distributed DP: noise floor as a fraction of the expected cohort",
                                 bounds="(0, 1]")
    example_noise: float = param(1.0, "example-level DP-SGD on the clients: noise multiplier", bounds="(0, 100]")
    example_clip: float = param(1.0, "example-level DP-SGD on the clients: per-example clip norm", bounds="(0, 1e6]")
    example_lr: float = param(0.3, "example-level DP-SGD on the clients: SGD lr (best of 0.03/0.1/0.3/1 at smoke)",
                              bounds="(0, 100]")
    engine: str = param("flower", "'flower' (Message-API apps under run_simulation) or 'inprocess'",
                        choices=("flower", "inprocess"))
    seed: int = param(0, "seed of data, sampling and initialization", bounds="[0, 2147483647]")

    @classmethod
    def smoke(cls) -> Config:
        """30 roles, 6 per round, 8 rounds of 10 local steps at lr 1e-2."""
        return cls(population=30, cohort=6.0, rounds=8, local_lr=1e-2, dp2_delay=2)

    @property
    def full_size(self) -> bool:
        return self == Config()

    def settings(self, arm: str):
        from simulations.flower.training.settings import FLSettings

        base: dict[str, Any] = dict(
            workload="lm-shakespeare", population=self.population, cohort=self.cohort, rounds=self.rounds,
            local_steps=self.local_steps, batch_size=self.batch_size, local_lr=self.local_lr, clip=self.clip,
            target_epsilon=self.target_epsilon, delta=self.delta, seed=self.seed,
            eval_every=max(1, self.rounds // 8), ddp_scale=self.ddp_scale)
        arms = {"fedavg": {}, "fedadam": {"server_opt": "fedadam", "server_lr": self.fedadam_eta},
                "dp-fedavg": {"dp": "central"},
                "dp2": {"dp": "central", "server_opt": "dp2", "dp2_delay": self.dp2_delay, "server_lr2": self.dp2_lr2},
                "distributed": {"dp": "distributed", "min_survivors": self.min_survivors},
                "example-dp": {"example_dp": True, "bias": True, "example_noise": self.example_noise,
                               "example_clip": self.example_clip, "local_lr": self.example_lr}}
        return FLSettings(**{**base, **arms[arm]})


def _train(config: Config, arm: str):
    from simulations.flower.training.engine import FederatedRun

    s = config.settings(arm)
    if config.engine == "flower":  # the distributed arm through SecAgg+ (simulate.run_flower picks the app)
        from simulations.flower.training.simulate import run_flower

        return run_flower(s, total_timeout=3600)
    run = FederatedRun(s)
    run.run_inprocess()
    return run


def run(config: Config, out_dir: Path) -> dict:
    from tqdm.auto import tqdm

    results: dict[str, Any] = {}
    baselines: dict[str, float] = {}
    for arm in tqdm(ARMS, desc=NAME, unit="arm"):
        r = _train(config, arm)
        hist = [h for h in r.history if "val_loss" in h]
        results[arm] = {"val_loss": hist[-1]["val_loss"], "curve": {"round": [h["round"] for h in hist],
                                                                     "val_loss": [h["val_loss"] for h in hist]},
                        "privacy": r.privacy(), "failures": sum(len(h["failures"]) for h in r.history),
                        "skipped_rounds": sum("skipped" in h for h in r.history),
                        "engine": config.engine,
                        "mean_cohort": sum(h["sampled"] for h in r.history) / len(r.history)}
        baselines = r.workload.baselines()
        population = r.population
    metrics = {"arms": results, **baselines, "population": population, "full_size": config.full_size,
               "parameters": int(r.x.size)}
    fig, axes = new_figure(1, 1, size=(6.5, 4.2))
    ax = axes[0][0]
    for arm in ARMS:
        c = results[arm]["curve"]
        ax.plot(c["round"], c["val_loss"], "o-", ms=3, label=f"{arm} ({results[arm]['val_loss']:.3f})")
    ax.axhline(baselines["unigram_val_loss"], color="k", ls="--", label="unigram model")
    eps = results["dp-fedavg"]["privacy"]["epsilon"]
    ax.set(xlabel="round", ylabel="validation loss (nats/char)",
           title=f"{NAME}: {population} roles, q={results['dp-fedavg']['privacy']['q']:.3f}, DP arms eps={eps:.1f}")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "fl_lm_shakespeare.png")
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def claims(result: dict) -> list[Claim]:
    """See the module docstring. DP² vs DP-FedAvg is strict at the full default (run and committed) and an
    observation at smaller sizes, where a few rounds of noise decide it.

    Distributed within 5 % of central is an observation: at our cohort it sits on the cut. The full default through
    SecAgg+ gave 2.851 against a cut of 2.889 (record; 2 of 40 rounds below the noise floor, not unmasked), an
    earlier in-process run 2.849, and another with fresh CSPRNG noise 2.891. At the same released-model ε it
    needs more noise, for two reasons. (1) Amplification for Skellam goes through Zhu & Wang's general
    subsampled-RDP bound, which is looser than dp-accounting's tight subsampled Gaussian: at q = 0.14 and T = 40 the calibrated noise std is 1.09 C, against central's 0.96 C.
    (2) The shares are sized for the noise floor (16 = 0.8 of the expected cohort), while a Poisson cohort
    averages 20.4 survivors, so the sum carries 1.28x the calibrated variance. Both shrink with large, stable
    cohorts (the paper's hundreds of clients per round), which 2 CPU cores cannot run."""
    m = result["metrics"]
    a = m["arms"]
    full = bool(m["full_size"])
    central, dp2, dist = a["dp-fedavg"]["val_loss"], a["dp2"]["val_loss"], a["distributed"]["val_loss"]
    eps_c, eps_d = a["dp-fedavg"]["privacy"]["epsilon"], a["distributed"]["privacy"]["epsilon"]
    target = result["config"]["target_epsilon"]
    return [
        Claim("non-private FedAvg's validation loss < the unigram model's", a["fedavg"]["val_loss"],
              m["unigram_val_loss"], a["fedavg"]["val_loss"] < m["unigram_val_loss"]),
        Claim("DP² server optimizer's validation loss <= DP-FedAvg's (same epsilon)", dp2, central, dp2 <= central,
              strict=full),
        Claim("distributed DP's validation loss <= 1.05 x central DP's (same epsilon)", dist, 1.05 * central,
              dist <= 1.05 * central, strict=False),
        Claim("the DP arms spend at most the target epsilon (released models)", max(eps_c, eps_d), target,
              max(eps_c, eps_d) <= target + 1e-6, sanity=True),
    ]


register(NAME, Config, run, claims, __doc__ or "",
         paper="McMahan et al. 2018 (DP-FedAvg); Agarwal, Kairouz, Liu 2021 (Skellam); Li et al. 2023 (DP²)")
