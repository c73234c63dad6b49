"""The ``emseg`` command line: one sub-command per flow.

Each command imports its flow lazily, so ``emseg ingest`` never imports torch. With no
``PREFECT_API_URL`` set, the flows run on Prefect's temporary local server.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Segment cell membranes in EM volumes with a U-Net, orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False)

# --- commands: each stage adds its own below, importing its flow inside the function ---


if __name__ == "__main__":
    app()
