"""The Prefect UI in headless Chromium: start a custom pipeline run through the form.

Debian's ``chromium`` (``make browser`` installs it) driven by Python playwright. The
pipeline deployment's defaults are set to the small test parameters (as an operator
would set a deployment's defaults); the test changes one field in the form (the report
name, so only the evaluate step runs again), submits, and waits for the run to complete.
Screenshots of the form, the finished run and its summary artifact are saved in the
test's tmp dir (and copied to ``$EMSEG_SCREENSHOTS`` when set).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import PipelineRun, PrefectStack, small_pipeline_params, wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _field(page, label: str):
    """The input of the form field whose label reads ``label`` (innermost match)."""
    # The field's own container: the nearest ancestor with the exact class token.
    container = ("ancestor::div[contains(concat(' ', normalize-space(@class), ' '), "
                 "' schema-form-property ')][1]")
    return page.locator(f"xpath=//span[contains(@class, 'schema-form-property__label') and "
                        f"normalize-space()='{label}']/{container}//*[self::textarea or self::input]").first


def test_custom_run_from_the_ui_form(prefect_stack: PrefectStack, finished_pipeline: PipelineRun,
                                     tmp_path: Path):
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ws = finished_pipeline.workspace
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pipeline/pipeline")
        client.update_deployment(deployment.id, DeploymentUpdate(
            parameters={"params": small_pipeline_params(ws, finished_pipeline.inputs)}))
        started = dt.datetime.now(dt.UTC)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{prefect_stack.ui_url}/deployments")
                deployment_link = page.locator("a[href*='/deployments/deployment/']",
                                               has_text=re.compile(r"^\s*pipeline\s*$"))
                deployment_link.first.click()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_text("Custom run").first.click()
                report = _field(page, "Report (Optional)")
                report.wait_for(timeout=30_000)
                report.fill("ui-report")
                page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
                page.wait_for_load_state("networkidle")  # the form validates as it loads: let it settle
                submit = page.get_by_role("button", name="Submit")
                submit.click()

                run = None
                deadline = time.monotonic() + 120
                clicks = [time.monotonic()]
                while run is None and time.monotonic() < deadline:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                        sort=FlowRunSort.START_TIME_DESC, limit=20)
                    run = next((r for r in runs if r.created and r.created >= started), None)
                    # Under load the UI can drop a click, or the server refuse the request ("Oops.
                    # Something went wrong": Prefect's sqlite "database is locked", seen in CI): still
                    # on the form 20 s after the last click and no run created, click again (a person
                    # would), at most three times in all.
                    if (run is None and len(clicks) < 3 and time.monotonic() > clicks[-1] + 20
                            and submit.is_visible()):
                        submit.click()
                        clicks.append(time.monotonic())
                    time.sleep(0.5)
                if run is None:
                    page.screenshot(path=str(tmp_path / "after-submit.png"), full_page=True)
                assert run is not None, (f"the form created no flow run in {len(clicks)} clicks "
                                         f"({tmp_path}/after-submit.png)")
                assert run.parameters["params"]["report"] == "ui-report"
                state = wait_for_run(run.id, timeout=240)
                page.goto(f"{prefect_stack.ui_url}/runs/flow-run/{run.id}")
                page.get_by_text("Completed").first.wait_for(timeout=30_000)
                page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
                # What a person looks at next: the run's summary artifact (outputs, scores, previews).
                page.locator("li.p-tab", has_text="Artifacts").first.click()
                page.get_by_text("pipeline-ui-report-summary").first.click()
                page.get_by_text("Previews (raw | prediction | label)").first.wait_for(timeout=30_000)
                page.set_viewport_size({"width": 1280, "height": 2200})  # the page scrolls inside itself
                page.screenshot(path=str(tmp_path / "summary.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                (tmp_path / "failure.html").write_text(page.content())
                raise
            finally:
                browser.close()

    assert state.is_completed(), state.message
    assert (ws / "reports" / "ui-report" / "metrics.json").is_file()
    shots = [tmp_path / f"{n}.png" for n in ("form", "run", "summary")]
    assert all(s.stat().st_size > 0 for s in shots)
    if os.environ.get("EMSEG_SCREENSHOTS"):  # keep them somewhere a person will look
        keep = Path(os.environ["EMSEG_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, keep / f"ui-{shot.name}")
