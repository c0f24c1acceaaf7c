"""Benchmark: one DP training step — non-private, Opacus DP-SGD, Opacus DP-Adam, DP²-RMSProp.

Three models: a 2-layer MLP over 10k features (batch 64); the dp2-imdb-transformer classifier (models.nn blocks,
its full-default size, batch 256); and the dp2-imdb logistic regression on the real IMDB features (batch 64),
where the experiments' exact row-sparse per-sample path (grad_sample_mode="no_op") is timed beside Opacus'
dense hooks/ew modes. For each we time one full step (zero_grad, forward, loss, backward, optimizer step) and
report the median of ``--reps`` runs
(interleaved across methods, after warm-up), the ratio to the non-private step on the same model measured in
the same process (the floor), and peak memory: on CUDA ``torch.cuda.max_memory_allocated`` per method; on CPU
the peak resident-set growth (VmHWM after a reset) of a fresh subprocess that runs the same steps (torch's CPU allocator is not seen
by tracemalloc). DP² is timed in both phases: A (DP-SGD with G accumulation) and B (per-sample
preconditioning with clip C2), the slower of which is compared with DP-Adam (goal: <= 1.10x).

    python benchmarks/bench_dp2.py [--device cpu|cuda] [--reps 9] [--models mlp,transformer,imdb-lr]
                                   [--json out.json] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

warnings.filterwarnings("ignore")

BATCH = 64
FEATURES, HIDDEN = 10_000, 128
TRANSFORMER_BATCH = 256  # dp2-imdb-transformer's full default: vocabulary 1,000 (+2), 64 words, d 32, 2 layers

# (label, method, grad-sample mode)
METHODS = [
    ("non-private SGD", "nonprivate", None),
    ("Opacus DP-SGD (hooks)", "dp-sgd", "hooks"),
    ("Opacus DP-Adam (hooks)", "dp-adam", "hooks"),
    ("DP²-RMSProp phase A (hooks)", "dp2-A", "hooks"),
    ("DP²-RMSProp phase B (hooks)", "dp2-B", "hooks"),
    ("Opacus DP-SGD (functorch)", "dp-sgd", "functorch"),
    ("Opacus DP-SGD (ew)", "dp-sgd", "ew"),
    ("Opacus DP-SGD (ghost)", "dp-sgd", "ghost"),
    ("DP²-RMSProp phase B (functorch)", "dp2-B", "functorch"),
    ("DP²-RMSProp phase B (ew)", "dp2-B", "ew"),
    ("DelayedPrecondRMSprop phase B (ghost)", "dp2-ntp-B", "ghost"),
]
# the IMDB logistic regression: Opacus' dense modes against the experiments' exact sparse per-sample gradients
IMDB_METHODS = [
    ("non-private SGD", "nonprivate", None),
    ("Opacus DP-SGD (hooks, dense batch)", "dp-sgd", "hooks"),
    ("Opacus DP-SGD (ew, dense batch)", "dp-sgd", "ew"),
    ("DP-SGD (exact sparse, no_op)", "dp-sgd", "sparse"),
    ("DP-Adam (exact sparse, no_op)", "dp-adam", "sparse"),
    ("DP²-RMSProp phase A (exact sparse, no_op)", "dp2-A", "sparse"),
    ("DP²-RMSProp phase B (exact sparse, no_op)", "dp2-B", "sparse"),
]


def _methods(model_name: str) -> list[tuple[str, str, str | None]]:
    return IMDB_METHODS if model_name == "imdb-lr" else METHODS


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    if name == "imdb-lr":
        return nn.Linear(FEATURES, 1)
    from simulations.dp.transformer import Config, TextClassifier

    c = Config()
    return TextClassifier(c.vocab + 2, c.max_len, c.n_embd, c.n_head, c.n_layer, c.mlp_ratio)


def _imdb_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A real Poisson batch of the dp2-imdb features: (sparse COO rows, the same rows dense, labels)."""
    from simulations.datasets import load_imdb
    from simulations.dp import _train

    d = load_imdb()
    rows = _train.SparseRows(d.x_train)
    idx = _train.poisson_indices(len(d.y_train), BATCH / len(d.y_train), 1, 0)
    x = rows.rows(idx)
    return x, x.to_dense(), torch.as_tensor(d.y_train[idx], dtype=torch.float32)


def _batch(name: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        x, n = (torch.rand(BATCH, FEATURES, generator=g) < 0.01).float(), BATCH
    else:
        from simulations.dp.transformer import Config

        c, n = Config(), TRANSFORMER_BATCH
        x = torch.randint(1, c.vocab + 2, (n, c.max_len), generator=g)
    return x.to(device), torch.randint(0, 2, (n,), generator=g).to(device)


def _build_imdb(method: str, mode: str | None) -> tuple[Callable[[], None], Callable[[], None]]:
    """The dp2-imdb step: nn.Linear on the dense batch (non-private, Opacus hooks/ew) or the experiments'
    SparseLogistic with exact sparse per-sample gradients (dpopt, grad_sample_mode="no_op")."""
    from torch.utils.data import DataLoader, TensorDataset

    from dpopt import DP2Config, PrivacyEngine
    from simulations.dp import _train

    xs, xd, y = _imdb_batch()
    loader = DataLoader(TensorDataset(torch.arange(25_000)), batch_size=BATCH, drop_last=True)  # q = 1/390
    bce = nn.functional.binary_cross_entropy_with_logits
    if mode == "sparse":
        model, x, loss = _train.SparseLogistic(FEATURES), xs, lambda m: _train.logistic_loss(m, (x, y))
    else:
        model, x = _model("imdb-lr"), xd
        loss = lambda m: bce(m(x).squeeze(1), y)  # noqa: E731
    inner = torch.optim.Adam(model.parameters(), lr=1e-3) if method == "dp-adam" else torch.optim.SGD(
        model.parameters(), lr=5.0)
    if method == "nonprivate":
        def step() -> None:
            inner.zero_grad(set_to_none=True)
            loss(model).backward()
            inner.step()

        return step, lambda: inner.zero_grad(set_to_none=True)
    dp2 = DP2Config(delay=10**6, clip2=5.0, lr2=3.0, eps=1e-7) if method.startswith("dp2") else None
    module, opt, _ = PrivacyEngine().make_private(
        module=model, optimizer=inner, data_loader=loader, noise_multiplier=1.0, max_grad_norm=0.5, dp2=dp2,
        grad_sample_mode="no_op" if mode == "sparse" else mode)
    if method == "dp2-B":
        for g in opt.param_groups:
            g["dp2_step"] = 10**6
        for p in opt.params:
            opt.state[p]["dp2_v"].uniform_(0.0, 1e-4)

    def dp_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(module).backward()
        opt.step()

    return dp_step, lambda: opt.zero_grad(set_to_none=True)


def _build(model_name: str, method: str, mode: str | None, device: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Closures that run one training step of ``method`` on ``model_name`` and free its gradients after it
    (outside the timed region, so that idle methods do not hold per-sample gradients while others run)."""
    from dpopt import DP2Config, PrivacyEngine
    from dpopt.delayed import DelayedPrecondRMSprop

    if model_name == "imdb-lr":
        return _build_imdb(method, mode)
    model = _model(model_name).to(device)
    x, y = _batch(model_name, device)
    loss_fn = nn.CrossEntropyLoss()
    if method == "nonprivate":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        return step, lambda: opt.zero_grad(set_to_none=True)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=len(x))  # q = 1: expected batch = len(x)
    dp2 = None
    if method == "dp-adam":
        inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif method == "dp2-ntp-B":
        inner = DelayedPrecondRMSprop(model.parameters(), lr=0.01, lr2=0.1, delay=10**6, eps=1e-3)
        for g in inner.param_groups:
            g["dp2_step"] = 10**6  # start in phase B
    else:
        inner = torch.optim.SGD(model.parameters(), lr=0.01)
        if method.startswith("dp2"):
            dp2 = DP2Config(delay=10**6, clip2=5.0, lr2=0.1, eps=1e-3)
    out = PrivacyEngine().make_private(
        module=model, optimizer=inner, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        dp2=dp2, grad_sample_mode=mode, criterion=loss_fn,
    )
    module, opt = out[0], out[1]
    crit = out[2] if len(out) == 4 else loss_fn
    if method == "dp2-B":  # jump to phase B with a non-trivial preconditioner
        for g in opt.param_groups:
            g["dp2_step"] = 10**6
        for p in opt.params:
            opt.state[p]["dp2_v"].uniform_(0.0, 1e-4)
    if method == "dp2-ntp-B":
        for p in module.parameters():
            inner.state[p]["G"] = torch.zeros_like(p)
            inner.state[p]["v"] = torch.rand_like(p) * 1e-4

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(module(x), y).backward()
        opt.step()

    return step, lambda: opt.zero_grad(set_to_none=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_all(model_name: str, device: str, reps: int, warmup: int) -> tuple[dict[str, dict], dict[str, list[float]]]:
    steps, results = {}, {}
    for label, method, mode in _methods(model_name):
        try:
            steps[label] = _build(model_name, method, mode, device)
            for _ in range(warmup):
                steps[label][0]()
            steps[label][1]()
            _sync(device)
        except Exception as err:  # an unsupported (model, mode) pair is a result, not a crash
            results[label] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
            steps.pop(label, None)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):  # interleave methods so machine noise hits all alike
        for label, (fn, release) in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[label].append(time.perf_counter() - t0)
            release()
    for label, ts in times.items():
        results[label] = {"median_s": statistics.median(ts), "min_s": min(ts), "reps": len(ts)}
    return results, times


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _memory_child(model_name: str, label: str, device: str) -> None:
    """Subprocess body: build model, data and optimizer, reset the resident high-water mark, run 3 steps and
    print the peak resident growth over the built state (MiB): gradients, optimizer state, per-sample
    gradients and temporaries, i.e. what training needs beyond the model and the batch."""
    torch.set_num_threads(1)
    method, mode = next((m, md) for lab, m, md in _methods(model_name) if lab == label)
    fn, _ = _build(model_name, method, mode, device)
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (the peak RSS) of this process
        fh.write("5")
    base = _status_kb("VmRSS")
    for _ in range(3):
        fn()
    print(json.dumps({"peak_mib": max(0, _status_kb("VmHWM") - base) / 1024}))


def _memory(model_name: str, device: str, labels: list[str]) -> dict[str, float]:
    out = {}
    for label in labels:
        if device == "cuda":
            method, mode = next((m, md) for lab, m, md in _methods(model_name) if lab == label)
            fn, release = _build(model_name, method, mode, device)
            fn()
            release()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            out[label] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del fn, release
            torch.cuda.empty_cache()
        else:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--memory-child", model_name, label],
                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            out[label] = json.loads(lines[-1])["peak_mib"] if lines else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", default="mlp,transformer,imdb-lr")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "LABEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child, args.device)
        return
    if args.reps < 5:
        ap.error("--reps must be >= 5 (medians of at least 5 runs)")
    torch.set_num_threads(args.threads)
    report: dict = {"device": args.device, "batch": BATCH, "torch": torch.__version__, "models": {}}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    for model_name in args.models.split(","):
        res, times = _time_all(model_name, args.device, args.reps, args.warmup)
        ok = [k for k, v in res.items() if "median_s" in v]
        if not args.no_memory:
            for label, mib in _memory(model_name, args.device, ok).items():
                res[label]["peak_mib"] = mib
        floor = res["non-private SGD"]["median_s"]
        for v in res.values():
            if "median_s" in v:
                v["ratio_to_nonprivate"] = v["median_s"] / floor
        tag = "exact sparse, no_op" if model_name == "imdb-lr" else "hooks"
        adam_label = "DP-Adam (exact sparse, no_op)" if model_name == "imdb-lr" else "Opacus DP-Adam (hooks)"
        adam = res[adam_label]["median_s"]
        dp2 = max(res[f"DP²-RMSProp phase A ({tag})"]["median_s"], res[f"DP²-RMSProp phase B ({tag})"]["median_s"])
        # paired: the ratio within each interleaved round, then the median (robust to machine-load drift)
        paired = {
            ph: statistics.median(a / b for a, b in zip(times[f"DP²-RMSProp phase {ph} ({tag})"], times[adam_label]))
            for ph in "AB"
        }
        n_params = sum(p.numel() for p in _model(model_name).parameters())
        batch = TRANSFORMER_BATCH if model_name == "transformer" else BATCH
        report["models"][model_name] = {
            "params": n_params, "batch": batch, "methods": res, "dp2_over_dp_adam": dp2 / adam,
            "dp2_over_dp_adam_paired": paired,
        }
        print(f"\n## {model_name} ({n_params:,} params, batch {batch}, {args.device}, median of {args.reps})")
        print("| method | median step (ms) | × non-private | peak memory (MiB) |")
        print("|---|---:|---:|---:|")
        for label, v in res.items():
            if "error" in v:
                print(f"| {label} | unsupported: {v['error']} | | |")
                continue
            mem = f"{v['peak_mib']:.1f}" if "peak_mib" in v else "-"
            print(f"| {label} | {1e3 * v['median_s']:.2f} | {v['ratio_to_nonprivate']:.2f} | {mem} |")
        print(
            f"DP² (slower phase) / Opacus DP-Adam step: {dp2 / adam:.3f} (ratio of medians); paired per round: "
            f"phase A {paired['A']:.3f}, phase B {paired['B']:.3f} (goal <= 1.10)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
