"""Logs of a training run: ``metrics.jsonl`` and a plot of validation accuracy.

The history lives in the checkpoints; the log files are rewritten from it when a run starts
or resumes, so the lines of an interrupted round never appear twice.
"""

import json
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "val_accuracy.png"


class RunLog:
    """Appends records to ``workdir/metrics.jsonl`` and redraws ``workdir/val_accuracy.png``.

    Args:
        workdir: the run directory, or None to keep records in memory only.
        history: records of the run so far (from its last checkpoint).
    """

    def __init__(self, workdir: Optional[Path], history: list[dict] = ()):
        self.workdir = None if workdir is None else Path(workdir)
        self.history = list(history)
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            lines = "".join(json.dumps(record) + "\n" for record in self.history)
            (self.workdir / METRICS_FILE).write_text(lines)

    def append(self, record: dict) -> None:
        self.history.append(record)
        if self.workdir is None:
            return
        with open(self.workdir / METRICS_FILE, "a") as stream:
            stream.write(json.dumps(record) + "\n")
        plot_accuracy(self.history, self.workdir / PLOT_FILE)


def plot_accuracy(history: list[dict], path: Path) -> None:
    """Validation accuracy against wall-clock seconds and against round, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in history if r.get("val_accuracy") is not None]
    figure, (by_time, by_round) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    by_time.plot([r["seconds"] for r in rounds], [r["val_accuracy"] for r in rounds], "o-")
    by_time.set_xlabel("training wall-clock (s)")
    by_time.set_ylabel("validation accuracy")
    by_round.plot([r["round"] for r in rounds], [r["val_accuracy"] for r in rounds], "o-")
    by_round.set_xlabel("round (convex solves)")
    for axis in (by_time, by_round):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
