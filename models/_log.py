"""Where training records go: the in-memory history, a JSONL file, and optionally TensorBoard."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append records to `history`, to `metrics_path` (one JSON object a line) and, when `tensorboard_dir` is set
    and the `tensorboard` package is installed, as TensorBoard scalars (skipped with one warning otherwise).
    `enabled=False` (non-zero ranks) keeps the history only."""

    def __init__(self, metrics_path: str | None, tensorboard_dir: str | None, enabled: bool = True) -> None:
        self.history: list[dict[str, Any]] = []
        self.metrics_path = metrics_path if enabled else None
        self._tb = None
        if enabled and tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard_dir is set but the tensorboard package is not installed; "
                              "writing the JSONL log only (pip install tensorboard)", stacklevel=3)
            else:
                self._tb = SummaryWriter(log_dir=tensorboard_dir)

    def write(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.metrics_path:
            Path(self.metrics_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, rec["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
