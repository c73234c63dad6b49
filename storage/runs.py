"""Training run folders: the completion marker, and the newest finished run.

::

    models/<run>/
        checkpoint-last.pt, checkpoint-best.pt, metrics.jsonl, config.json
        complete.json      written last, by the training stage, when the run finished

A run folder exists (with a ``checkpoint-best.pt``) from its first validation on, so the
folder alone cannot say whether training finished; ``complete.json`` can. The training
stage removes it when a run (re)starts and writes it after everything else, atomically.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from storage.errors import StoreNotFoundError
from storage.files import remove_files, write_json

COMPLETE_FILE = "complete.json"
BEST_CHECKPOINT = "checkpoint-best.pt"


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
