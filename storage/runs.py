"""Training run folders: the completion marker, and the newest finished run.

::

    models/<run>/
        checkpoint-last.pt, checkpoint-best.pt, metrics.jsonl, config.json
        complete.json      written last, by the training stage, when the run finished

A run folder exists (with a ``checkpoint-best.pt``) from its first validation on, so the
folder alone cannot say whether training finished; ``complete.json`` can. The training
stage removes it when a run (re)starts and writes it after everything else, atomically.

:class:`TrainingRun` is the handle the training loop (``unet/``) writes through: it names
the folder's files and reads and writes the JSON ones; checkpoints are serialised by
``unet.checkpoint`` (storage never imports torch) and written to the paths named here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.errors import StoreNotFoundError
from storage.files import append_jsonl, read_json, read_jsonl, remove_files, write_json, write_jsonl

COMPLETE_FILE = "complete.json"
BEST_CHECKPOINT = "checkpoint-best.pt"
LAST_CHECKPOINT = "checkpoint-last.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class TrainingRun:
    """A training run folder ``models/<run>/`` (a local path) and the files in it."""

    path: str

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def last_checkpoint(self) -> str:
        return self._file(LAST_CHECKPOINT)

    @property
    def best_checkpoint(self) -> str:
        return self._file(BEST_CHECKPOINT)

    @property
    def metrics_log(self) -> str:
        return self._file(METRICS_FILE)

    @property
    def config_file(self) -> str:
        return self._file(CONFIG_FILE)

    def has_last(self) -> bool:
        return os.path.exists(self.last_checkpoint)

    def has_best(self) -> bool:
        return os.path.exists(self.best_checkpoint)

    def read_config(self) -> Any:
        """``config.json`` as written, or None when there is none."""
        return read_json(self.config_file) if os.path.exists(self.config_file) else None

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_file, config)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``."""
        append_jsonl(self.metrics_log, record)

    def start_log(self, records: list[dict[str, Any]]) -> None:
        """Start ``metrics.jsonl`` afresh with ``records``."""
        write_jsonl(self.metrics_log, records)

    def read_log(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_log)

    def remove_checkpoints(self) -> None:
        """Drop an earlier run's checkpoints (a new or replacing run starts)."""
        remove_files(self.last_checkpoint, self.best_checkpoint)

    def clear_complete(self) -> None:
        clear_run_complete(self.path)

    def mark_complete(self, **record: Any) -> None:
        mark_run_complete(self.path, **record)


def clear_run_complete(run_dir: str | os.PathLike[str]) -> None:
    """The run in ``run_dir`` is (re)starting: it is not finished until :func:`mark_run_complete`."""
    remove_files(os.path.join(os.fspath(run_dir), COMPLETE_FILE))


def mark_run_complete(run_dir: str | os.PathLike[str], **record: Any) -> None:
    """Record, last, that the run in ``run_dir`` finished (``record``: step, best metrics...)."""
    write_json(os.path.join(os.fspath(run_dir), COMPLETE_FILE),
               {**record, "complete": True, "at": datetime.now(UTC).isoformat(timespec="seconds")})


def is_run_complete(run_dir: str | os.PathLike[str]) -> bool:
    return os.path.isfile(os.path.join(os.fspath(run_dir), COMPLETE_FILE))


def newest_finished_checkpoint(models_dir: str | os.PathLike[str], filename: str = BEST_CHECKPOINT) -> str:
    """``<run>/<filename>`` of the most recently written *finished* training run in ``models_dir``.

    Runs without ``complete.json`` (still training, killed, failed) are passed over.
    """
    root = os.fspath(models_dir)
    found, unfinished = [], []
    if os.path.isdir(root):
        for entry in os.scandir(root):
            ckpt = os.path.join(entry.path, filename)
            if entry.is_dir() and os.path.isfile(ckpt):
                if is_run_complete(entry.path):
                    found.append((os.stat(ckpt).st_mtime_ns, ckpt))
                else:
                    unfinished.append(entry.name)
    if not found:
        also = (f" ({len(unfinished)} unfinished run(s) passed over: {', '.join(sorted(unfinished)[:3])}; "
                f"a run is finished when training wrote its {COMPLETE_FILE})") if unfinished else ""
        raise StoreNotFoundError(f"no finished training run with a {filename} under {root}{also}; train a "
                                 "model first or name a checkpoint")
    return max(found)[1]
