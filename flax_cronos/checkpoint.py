"""Run directories: Orbax checkpoints per round and the run's ``config.json``.

The only module that imports Orbax. A run directory holds

- ``checkpoints/<round>/``: ``state`` (a pytree of arrays: parameters, optimizer state, RNG,
  round, step) and ``meta`` (JSON: metrics history, wall-clock, anything small);
- ``config.json``: the settings the run was started with; a resumed run must match them
  (settings added to flax-cronos since the run started are taken as given, with a warning);
- ``corrupt/``: checkpoints that could not be read, moved aside so they are never used again.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves no half checkpoint behind (the temporary folder is removed on the next
start). Kept: the ``max_to_keep`` latest rounds and the round with the best validation metric
(the latest of equal ones, so that a resumed run keeps the rounds an uninterrupted one does).
"""

import json
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint import checkpoint_managers

CONFIG_FILE = "config.json"


class Restored(NamedTuple):
    step: int
    state: Any
    meta: dict


class RunCheckpoints:
    """Orbax checkpoints of one run directory.

    Args:
        workdir: the run directory (created when missing).
        max_to_keep: how many of the latest checkpoints to keep.
        best_metric: the ``metrics`` key whose largest value marks the best checkpoint (kept
            too).
    """

    def __init__(self, workdir, max_to_keep: int = 3, best_metric: str = "val_accuracy"):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1; got {max_to_keep}")
        self.workdir = Path(workdir)

        def rank(metrics):            # ties go to the later round (``save`` adds the step)
            return metrics[best_metric], metrics["step"]

        self._options = ocp.CheckpointManagerOptions(
            cleanup_tmp_directories=True,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy([
                checkpoint_managers.LatestN(max_to_keep),
                checkpoint_managers.BestN(get_metric_fn=rank, n=1),
            ]),
            # Orbax writes the metrics to disk only with a best_fn; without them on disk, a
            # resumed run could not rank the rounds saved before it and kept them all
            best_fn=rank, best_mode="max")
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.workdir.resolve() / "checkpoints", options=self._options,
                                     item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, meta: dict, metrics: Optional[dict] = None) -> None:
        """Starts writing ``state`` and ``meta`` as checkpoint ``step`` (asynchronously)."""
        metrics = None if metrics is None else {**metrics, "step": step}   # breaks ties
        self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore(self, like, step: Optional[int] = None) -> Optional[Restored]:
        """Checkpoint ``step`` (default: the newest readable one) with the structure of ``like``,
        its arrays placed as ``like``'s are (so a run saved on 8 devices restores onto 2 or one).

        Without ``step``, a checkpoint that cannot be read (truncated, corrupted, of another
        structure) is reported with a warning and moved to ``corrupt/``, and the one before it
        is tried next. Returns None when there is no readable checkpoint (or no ``step``).
        """
        if step is not None:
            return self._read(step, like) if step in self.steps() else None
        for latest in sorted(self.steps(), reverse=True):
            try:
                return self._read(latest, like)
            except Exception as error:            # noqa: BLE001 — any unreadable checkpoint
                self._quarantine(latest, error)
        return None

    def _read(self, step: int, like) -> Restored:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return Restored(step, restored["state"], restored["meta"])

    def _quarantine(self, step: int, error: Exception) -> None:
        source = self.workdir.resolve() / "checkpoints" / str(step)
        target = self.workdir / "corrupt" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        warnings.warn(f"checkpoint {source} could not be read ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); moved it to {target} "
                      "and trying the previous one", RuntimeWarning, stacklevel=3)
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        self._manager.close()
        self._manager = self._open()

    def wait(self) -> None:
        """Blocks until the pending save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def check_run_config(workdir, config: dict, may_change: tuple[str, ...] = ()) -> None:
    """Writes ``config.json`` for a new run, or checks a resumed run against it.

    A setting the stored file lacks is one added to flax-cronos after the run started (e.g.
    ``cronos.anderson``): the run resumes with the value given, which is then recorded, and a
    ``RuntimeWarning`` names it.

    Args:
        workdir: the run directory.
        config: JSON-serialisable settings (nested dicts allowed).
        may_change: dotted keys that a resumed run may set differently (e.g. the number of
            rounds, to extend a run).

    Raises:
        ValueError: listing the settings that differ from the run's ``config.json``.
    """
    path = Path(workdir) / CONFIG_FILE
    config = json.loads(json.dumps(config))                 # tuples → lists, as stored
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return
    stored = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
    given = traverse_util.flatten_dict(config, sep=".")
    added = sorted(set(given) - set(stored))
    differences = [f"{key}: run has {stored[key]!r}, now {given.get(key)!r}"
                   for key in sorted(stored)
                   if key not in may_change and stored[key] != given.get(key)]
    if differences:
        raise ValueError(f"{workdir} holds a run with other settings, which cannot be resumed "
                         f"with these ({'; '.join(differences)}); use another workdir or the "
                         "run's own settings")
    if added:
        warnings.warn(f"{path} predates the settings "
                      f"{', '.join(f'{key}={given[key]!r}' for key in added)}; the run resumes "
                      "with these values", RuntimeWarning, stacklevel=2)
    if stored != given:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

