"""``emseg`` service commands: view, and the orchestration commands pipeline, nightly, setup, demo
(these always run their flows, on Prefect's temporary local server without ``PREFECT_API_URL``)."""

from __future__ import annotations

import typer


def view(
    targets: list[str] = typer.Argument(..., help="Workspace roots (volumes/, predictions/, segmentations/, "
                                        "labels/ are shown) or OME-Zarr stores."),
    name: list[str] | None = typer.Option(None, "--name", help="Show only stores of this name (repeatable)."),
    screenshot: str | None = typer.Option(None, "--screenshot", help="Render the view headless (Chromium) "
                                          "into this PNG once the data has loaded, then exit."),
    z: int | None = typer.Option(None, help="Slice shown (default: the middle one)."),
    layout: str = typer.Option("xy", help="xy, 4panel, xz, yz or 3d."),
    size: tuple[int, int] = typer.Option((1280, 800), help="Screenshot width and height, pixels."),
    bind: str = typer.Option("127.0.0.1", help="Address the servers listen on (0.0.0.0 exposes the "
                             "workspace's files, behind a random token, to the network)."),
    port: int = typer.Option(0, help="Viewer port (0 = any free port)."),
    data_port: int = typer.Option(0, help="File server port (0 = any free port)."),
) -> None:
    """Open raw volumes, predictions and segmentations together in neuroglancer; prints the URL."""
    import time

    from flows.view import ScreenshotError, open_view, take_screenshot

    view = open_view(targets, names=name or (), bind_address=bind, port=port, data_port=data_port,
                     layout=layout, z=z, size=size)
    try:
        for note in view.notes:
            typer.secho(f"emseg: note: {note}", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"layers: {', '.join(s.layer for s in view.stores)}")
        if screenshot:
            try:
                shot = take_screenshot(view, screenshot, size=size)
            except ScreenshotError as e:
                typer.secho(f"emseg: error: {e}", err=True, fg=typer.colors.RED)
                raise SystemExit(2) from None
            typer.echo(f"screenshot: {shot['screenshot']} ({shot['width']} x {shot['height']})")
            return
        typer.echo(view.url, nl=True)
        typer.echo("serving until Ctrl-C", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        view.close()


def pipeline(
    params_json: str = typer.Argument(..., help="PipelineParams as JSON, or @file.json "
                                      "(at least source and labels)."),
) -> None:
    """Run ingest -> augment -> train -> infer -> evaluate, skipping steps whose outputs are current."""
    import json

    from flows.pipeline import pipeline_flow
    from flows.pipeline_config import PipelineParams

    text = open(params_json[1:]).read() if params_json.startswith("@") else params_json
    result = pipeline_flow(PipelineParams.model_validate_json(text))
    typer.echo(json.dumps(result, indent=2, default=str))


def nightly(
    inbox: str = typer.Option("inbox", help="Folder scanned for new TIFF stacks."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    checkpoint: str = typer.Option(None, help="Model checkpoint (default: best of the newest training run)."),
    settle_s: float = typer.Option(60.0, help="Seconds a file must stay unchanged before it is taken."),
) -> None:
    """Process the stacks in the inbox once (what the nightly deployment runs)."""
    import json

    from flows.nightly import NightlyParams, nightly_flow

    result = nightly_flow(NightlyParams(inbox=inbox, workspace=workspace, checkpoint=checkpoint,
                                        settle_s=settle_s))
    typer.echo(json.dumps(result, indent=2, default=str))


def setup(
    zombie_after_s: float = typer.Option(90.0, help="Mark a run Crashed after this long without heartbeats."),
) -> None:
    """Create the work pools (cpu, gpu) and the crash-zombie-flows automation on PREFECT_API_URL's server."""
    from flows.setup import setup_server

    report = setup_server(zombie_after_s=zombie_after_s)
    typer.echo(f"pools created: {', '.join(report['pools_created']) or 'none (already there)'}; "
               f"zombie automation: {report['automation']}")


def demo(
    workspace: str = typer.Option("workspace", help="Workspace root for the demo's inputs and outputs."),
    isbi: str = typer.Option(None, help="Folder with the ISBI 2012 train-volume.tif / train-labels.tif "
                             "(default: a synthetic EM-like volume)."),
    steps: int | None = typer.Option(None, help="Training steps (default: the recipe's, 300 for demo, "
                                     "1200 for cpu)."),
    recipe: str = typer.Option("demo", help="demo: a small model, minutes (the point is to run every "
                               "step); cpu: the recipe for a lab without a GPU, about 20 minutes on 2 cores "
                               "(use with --isbi: V_rand on slices 20-29 in docs/benchmarks.md)."),
) -> None:
    """The whole pipeline on a small synthetic volume (or ISBI 2012), then prints metrics and outputs."""
    from flows.demo import RECIPES, run_demo, use_workspace_prefect_home

    if recipe not in RECIPES:
        raise typer.BadParameter(f"must be one of {', '.join(RECIPES)}, got {recipe!r}",
                                 param_hint="--recipe")

    use_workspace_prefect_home(workspace)  # before Prefect is imported: its database in the workspace
    run_demo(workspace=workspace, isbi_dir=isbi, steps=steps, recipe=recipe)  # type: ignore[arg-type]
