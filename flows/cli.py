"""The ``emseg`` command line: one sub-command per stage, plus the orchestration commands.

A stage command checks its inputs first (headers only, :mod:`flows.preflight`), then runs
the stage function in this process under a progress bar (:mod:`flows.direct`) when no
Prefect server is configured, or its flow when ``PREFECT_API_URL`` is set or ``--prefect``
is given. Imports are lazy: ``emseg ingest`` never imports torch, and no command imports
Prefect before its inputs are checked. ``demo``, ``pipeline`` and ``nightly`` always run
their flows (on Prefect's temporary local server without ``PREFECT_API_URL``).

The commands live in :mod:`flows.cli_stages` (ingest, infer, augment, train, evaluate),
:mod:`flows.cli_segment`, :mod:`flows.cli_services` (view, pipeline, nightly, setup, demo) and
:mod:`flows.cli_export`; they are added to ``app`` here, in the order ``--help`` lists them.
Options shared by several commands (``--workspace`` and its old spelling ``--out``) are in
:mod:`flows.cli_options`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import typer

from flows.cli_segment import segment
from flows.cli_services import demo, nightly, pipeline, setup, view
from flows.cli_stages import augment, evaluate, infer, ingest, train
from storage.errors import StorageError, is_permanent_os_error

__all__ = ["USER_ERRORS", "app", "augment", "demo", "evaluate", "export", "infer", "ingest", "main",
           "nightly", "pipeline", "segment", "setup", "train", "view"]

app = typer.Typer(help="Segment cell membranes in EM volumes with a U-Net, orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False)

# Listed in --help in the order added: the stages, then the services (export below).
for _command in (ingest, infer, augment, train, evaluate, segment, view, pipeline, nightly, setup, demo):
    app.command()(_command)


from flows.cli_export import export  # noqa: E402  (emseg export: its own module)

app.command()(export)


# What a user can fix (bad input, an existing output, invalid parameters: pydantic's
# ValidationError is a ValueError) is reported in one line; anything else keeps its traceback.
USER_ERRORS = (StorageError, ValueError, FileNotFoundError, FileExistsError)


# Prefect gives its temporary local server 20 s to start. The first start in a workspace creates
# and migrates the server's database, which took longer than that on the 2-core machine: `emseg
# demo` on a fresh machine then failed with "Timed out while attempting to connect to ephemeral
# Prefect API server" before doing anything. A user's own setting wins.
EPHEMERAL_STARTUP_S = "180"


def prefect_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Settings Prefect reads once, on import: set before any command imports it."""
    environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_S)


def main() -> None:
    """Console entry point (``emseg``). ``EMSEG_DEBUG=1`` shows the traceback of user errors too."""
    prefect_defaults()
    try:
        app()
    except USER_ERRORS as e:
        if os.environ.get("EMSEG_DEBUG"):
            raise
        typer.secho(f"emseg: error: {type(e).__name__}: {e}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None
    except OSError as e:  # a full or read-only disk, no permission: one line, with the path if known
        if os.environ.get("EMSEG_DEBUG") or not is_permanent_os_error(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        typer.secho(f"emseg: error: {e.strerror or e}{where} [errno {e.errno}]", err=True,
                    fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

