"""``emseg view --screenshot``: the view rendered in headless Chromium, written as a PNG."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.view import View

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium on a machine without a GPU and without internet: WebGL through
# SwiftShader (opt-in since Chromium 137) and no background requests to outside hosts.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-dev-shm-usage"]



class ScreenshotError(RuntimeError):
    """The browser could not render the view (no Chromium, no WebGL, data that never loaded)."""


def take_screenshot(view: View, out: str | os.PathLike[str], *, size: tuple[int, int] = (1280, 800),
                    timeout_s: float = 120.0, chromium: str = CHROMIUM) -> dict[str, Any]:
    """Render the view in headless Chromium once all visible data has loaded; write a PNG.

    Neuroglancer's client answers a screenshot request only when every chunk in view is on
    the GPU, so the image never shows half-loaded data. Returns the path, the size and the
    last chunk statistics.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ScreenshotError("--screenshot drives Chromium with playwright: pip install playwright") from e
    if not os.path.exists(chromium):
        raise ScreenshotError(f"no Chromium at {chromium}: install Debian's chromium package (make browser)")
    viewer = view.viewer
    with viewer.txn() as state:
        state.show_axis_lines = False  # the red and green cross through the centre
    with viewer.config_state.txn() as s:
        s.show_ui_controls = False
        s.show_panel_borders = False
        s.viewer_size = list(size)
    done = threading.Event()
    reply: list[Any] = []
    stats: list[Any] = []

    def on_reply(r: Any) -> None:
        reply.append(r)
        done.set()

    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(view.url)
            viewer.async_screenshot(on_reply, statistics_callback=stats.append)
            if not done.wait(timeout_s):
                last = stats[-1].total.to_json() if stats else "none"
                raise ScreenshotError(f"the view did not finish rendering in {timeout_s:.0f} s (last chunk "
                                      f"statistics: {last}; browser console: {console[-5:]})")
        except PlaywrightError as e:
            raise ScreenshotError(f"Chromium failed: {e}") from e
        finally:
            browser.close()
    shot = reply[0].screenshot
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "wb") as f:
        f.write(shot.image)
    os.replace(tmp, out)
    return {"screenshot": out, "width": int(shot.width), "height": int(shot.height),
            "chunks": stats[-1].total.to_json() if stats else None}
