"""``emseg view``: a workspace's volumes, predictions and segmentations in neuroglancer.

Neuroglancer reads the stores itself, as OME-Zarr 0.5 (Zarr v3) over HTTP, so it uses
their pyramids (s1, s2, ...) when zoomed out and fetches only the chunks in view; nothing
is copied or converted. Two local servers run in this process, in daemon threads that
die with it::

    browser ──▶ neuroglancer server (viewer page + its state)    --port,      127.0.0.1
       └──────▶ file server: <root>/volumes/<name>.zarr/...      --data-port, 127.0.0.1
                (CORS, HTTP Range for shard indexes, random token in every path)

The neuroglancer Python package ships its own client, so no internet access is needed.
Stores map to layers by the ``kind`` their writer recorded:

    volumes/ (image)              image, grey
    predictions/ (prediction)     image, membrane probability as a coloured overlay
    segmentations/ (segmentation) segmentation, cells in random colours
    labels/ (label)               uint8 membrane masks as a coloured overlay (hidden at
                                  first), wider integer labels as a segmentation

``--screenshot FILE`` renders one cross-section in headless Chromium (driven by
playwright, Debian's ``/usr/bin/chromium``) once every visible chunk has loaded, writes
the PNG and exits. Coordinates: neuroglancer shows axes x, y, z in nanometres (the
stores' voxel sizes); ``z`` options are slice indices.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.errors import StoreNotFoundError
from storage.volume import Volume, group_attr, open_volume

if TYPE_CHECKING:
    import neuroglancer

# Workspace folders whose stores are OME-Zarr volumes, in the order their layers are drawn
# (later ones on top). datasets/ holds training sets (N, H, W), not volumes: not shown.
FOLDERS = ("volumes", "predictions", "segmentations", "labels")
KIND_FOLDER = {"image": "volumes", "prediction": "predictions", "segmentation": "segmentations",
               "label": "labels"}
CHROMIUM = "/usr/bin/chromium"
# Headless Chromium on a machine without a GPU and without internet: WebGL through
# SwiftShader (opt-in since Chromium 137) and no background requests to outside hosts.
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-dev-shm-usage"]

# Membrane probability (uint8 0..255) as a coloured overlay whose opacity grows with it.
PROBABILITY_SHADER = """#uicontrol vec3 color color(default="#ff00ff")
#uicontrol float opacity slider(min=0, max=1, default=0.6)
#uicontrol invlerp probability(range=[0, 255])
void main() {
  emitRGBA(vec4(color, clamp(probability(), 0.0, 1.0) * opacity));
}
"""

_LABEL_SHADER = """#uicontrol vec3 color color(default="#00ff00")
#uicontrol float opacity slider(min=0, max=1, default=0.5)
void main() {
  float v = toNormalized(getDataValue());
  emitRGBA(vec4(color, (%s) ? opacity : 0.0));
}
"""


def label_shader(polarity: str) -> str:
    """Membrane pixels of a uint8 label mask as a coloured overlay (ISBI: 0 = membrane)."""
    return _LABEL_SHADER % ("v > 0.0" if polarity == "nonzero_is_membrane" else "v == 0.0")


@dataclass(frozen=True)
class Store:
    """One OME-Zarr volume to show. ``shape`` (z, y, x) voxels, ``voxel_size`` (z, y, x) nm."""

    path: str
    layer: str                      # layer name, e.g. "predictions/synthetic"
    kind: str                       # image, prediction, segmentation or label
    dtype: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    levels: int
    root: str = ""                  # the folder served over HTTP that holds it ("" for a URL)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.layer.rsplit("/", 1)[-1]

    @property
    def extent_nm(self) -> tuple[float, float, float]:
        return tuple(n * v for n, v in zip(self.shape, self.voxel_size, strict=True))  # type: ignore[return-value]


def _kind_of(vol: Volume) -> str:
    kind = vol.attrs.get("kind")
    if kind in KIND_FOLDER:
        return str(kind)
    # An OME-Zarr volume from elsewhere: an image-label is a segmentation, anything else an image.
    return "segmentation" if "image-label" in group_attr(vol.group, "ome") else "image"


def _store(vol: Volume, root: str, folder: str | None) -> Store:
    kind = _kind_of(vol)
    name = os.path.basename(vol.path.rstrip("/")).removesuffix(".zarr")
    return Store(path=vol.path, layer=f"{folder or KIND_FOLDER[kind]}/{name}", kind=kind,
                 dtype=str(vol.dtype), shape=vol.shape, voxel_size=vol.voxel_size.as_tuple(),
                 levels=len(vol.levels), root=root, attrs=vol.attrs)


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _is_store(path: str) -> bool:
    return _is_url(path) or os.path.isfile(os.path.join(path, "zarr.json"))


def find_stores(targets: Sequence[str], names: Sequence[str] = ()) -> tuple[list[Store], list[str]]:
    """The volumes to show, and notes on what was left out.

    Each target is a workspace root (its volumes/, predictions/, segmentations/ and
    labels/ are scanned; unfinished stores are left out with a note) or one OME-Zarr
    store (refused if unfinished: its writer's data would be partial). ``names`` keeps
    only stores with these names. Raises StoreNotFoundError when nothing is left.
    """
    stores: list[Store] = []
    notes: list[str] = []
    for target in targets:
        path = target.removeprefix("file://")
        if _is_store(path):
            root = "" if _is_url(path) else os.path.dirname(os.path.abspath(path.rstrip("/")))
            stores.append(_store(open_volume(path), root, None))
            continue
        folders = [f for f in FOLDERS if os.path.isdir(os.path.join(path, f))]
        if not folders:
            raise StoreNotFoundError(f"{target} is neither a workspace (with {', '.join(FOLDERS)}) nor an "
                                     "OME-Zarr volume")
        for folder in folders:
            for entry in sorted(os.listdir(os.path.join(path, folder))):
                if not entry.endswith(".zarr"):
                    continue
                store_path = os.path.join(path, folder, entry)
                try:
                    vol = open_volume(store_path, require_complete=False)
                except StoreNotFoundError as e:
                    notes.append(f"{store_path}: not shown ({e})")
                    continue
                if not vol.is_complete:
                    notes.append(f"{store_path}: not shown (unfinished: its writer did not complete)")
                    continue
                stores.append(_store(vol, os.path.abspath(path), folder))
    found = sorted({s.name for s in stores})
    if names:
        stores = [s for s in stores if s.name in names]
    if not stores:
        raise StoreNotFoundError(f"no finished volume to show in {', '.join(targets)}"
                                 + (f" named {', '.join(names)} (found: {', '.join(found) or 'none'})"
                                    if names else ""))
    order = {f: i for i, f in enumerate(FOLDERS)}
    stores.sort(key=lambda s: order[KIND_FOLDER[s.kind]])  # stable: targets' order within a folder
    seen: dict[str, int] = {}
    for i, s in enumerate(stores):  # two targets may hold stores of the same folder and name
        seen[s.layer] = seen.get(s.layer, 0) + 1
        if seen[s.layer] > 1:
            stores[i] = Store(**{**s.__dict__, "layer": f"{s.layer} ({seen[s.layer]})"})
    return stores, notes


def layer_for(store: Store, source: str) -> neuroglancer.Layer:
    """The neuroglancer layer for ``store``, reading it from ``source`` (a neuroglancer data URL)."""
    import neuroglancer

    if store.kind == "segmentation" or (store.kind == "label" and store.dtype != "uint8"):
        return neuroglancer.SegmentationLayer(source=source, selected_alpha=0.4, not_selected_alpha=0.0)
    if store.kind == "prediction":
        return neuroglancer.ImageLayer(source=source, shader=PROBABILITY_SHADER, opacity=1.0)
    if store.kind == "label":
        polarity = str(store.attrs.get("label_polarity", "zero_is_membrane"))
        return neuroglancer.ImageLayer(source=source, opacity=1.0, shader=label_shader(polarity))
    return neuroglancer.ImageLayer(source=source, opacity=1.0)


def viewer_state(stores: Sequence[Store], sources: dict[str, str], *, layout: str = "xy",
                 z: int | None = None, size: tuple[int, int] = (1280, 800)) -> neuroglancer.ViewerState:
    """The whole view: one layer per store (``sources[store.path]`` is its data URL), axes
    x, y, z at the first store's voxel size (nm), centred on slice ``z`` (default: the
    middle one), zoomed so every store's y, x extent fits a ``size`` (width, height) panel."""
    import neuroglancer

    first = stores[0]
    vz, vy, vx = first.voxel_size
    ez, ey, ex = (max(s.extent_nm[a] for s in stores) for a in range(3))
    nz = round(ez / vz)
    if z is not None and not 0 <= z < nz:
        raise ValueError(f"z must be a slice index in [0, {nz}), got {z}")
    state = neuroglancer.ViewerState()
    state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[vx, vy, vz])
    # Voxel coordinates of the view's centre: neuroglancer puts voxel i at [i, i + 1).
    state.position = [ex / vx / 2, ey / vy / 2, (nz // 2 if z is None else z) + 0.5]
    panels = 2 if layout == "4panel" else 1
    state.cross_section_scale = 1.02 * max(ex / vx / (size[0] / panels), ey / vy / (size[1] / panels))
    state.layout = layout
    for store in stores:
        state.layers[store.layer] = layer_for(store, sources[store.path])
        # Ground truth starts hidden: it would cover the prediction and the cells.
        state.layers[store.layer].visible = store.kind != "label"
    visible = [s.layer for s in stores if s.kind != "label"]
    state.selected_layer.layer = visible[-1] if visible else stores[-1].layer
    return state


class DataServer:
    """HTTP file servers (CORS, Range) for the stores' folders; ``source(store)`` is a store's URL.

    One server per served folder (a workspace root, or the folder of a store given by
    path), each in a daemon thread of this process, each behind a random token in the
    path; with ``port``, the n-th folder is served on ``port + n``. ``close()`` stops them.
    """

    def __init__(self, roots: Sequence[str], bind_address: str = "127.0.0.1", port: int = 0) -> None:
        self._servers: list[Any] = []
        self._urls: dict[str, str] = {}
        try:
            for i, root in enumerate(dict.fromkeys(r for r in roots if r)):
                server = _file_server(root, bind_address, port + i if port else 0)
                self._servers.append(server)
                self._urls[root] = server.url
        except BaseException:
            self.close()
            raise

    def source(self, store: Store) -> str:
        """The neuroglancer data source of ``store`` (OME-Zarr on Zarr v3)."""
        if not store.root:
            return f"zarr3://{store.path.rstrip('/')}/"
        rel = os.path.relpath(os.path.abspath(store.path), store.root).replace(os.sep, "/")
        return f"zarr3://{self._urls[store.root]}/{rel}/"

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()


def _file_server(root: str, bind_address: str, port: int) -> Any:
    """neuroglancer's CORS static file server for ``root`` on ``port`` (0 = any free one), in a
    daemon thread; its ``url`` ends in a random token. (neuroglancer's own StaticFileServer
    always takes a free port; a fixed one suits an SSH tunnel.)"""
    import socket

    import tornado.httpserver
    import tornado.netutil
    import tornado.web
    from neuroglancer.random_token import make_random_token
    from neuroglancer.static_file_server import CorsStaticFileHandler, StaticFileServer

    class FileServer(StaticFileServer):  # type: ignore[misc]
        def _attempt_to_start_server(self) -> None:
            token = make_random_token()
            app = tornado.web.Application([(rf"/{token}/(.*)", CorsStaticFileHandler, {"path": root})])
            self.http_server = tornado.httpserver.HTTPServer(app)
            sockets = tornado.netutil.bind_sockets(port=port, address=bind_address)
            self.http_server.add_sockets(sockets)
            host = socket.getfqdn() if bind_address in ("", "0.0.0.0", "::") else bind_address
            self.url = f"http://{host}:{sockets[0].getsockname()[1]}/{token}"

    return FileServer(root, bind_address=bind_address, daemon=True)


@dataclass
class View:
    """A running view: the neuroglancer viewer and the data servers behind it."""

    viewer: neuroglancer.Viewer
    data: DataServer
    stores: list[Store]
    notes: list[str]

    @property
    def url(self) -> str:
        return str(self.viewer.get_viewer_url())

    def close(self) -> None:
        import neuroglancer

        self.data.close()
        neuroglancer.stop()


def open_view(targets: Sequence[str], *, names: Sequence[str] = (), bind_address: str = "127.0.0.1",
              port: int = 0, data_port: int = 0, layout: str = "xy", z: int | None = None,
              size: tuple[int, int] = (1280, 800)) -> View:
    """Start the servers and a viewer showing every finished store of ``targets``."""
    import neuroglancer

    stores, notes = find_stores(targets, names)
    data = DataServer([s.root for s in stores], bind_address, data_port)
    try:
        state = viewer_state(stores, {s.path: data.source(s) for s in stores}, layout=layout, z=z,
                             size=size)
        neuroglancer.set_server_bind_address(bind_address, port)
        viewer = neuroglancer.Viewer()
        viewer.set_state(state)
    except BaseException:
        data.close()
        raise
    return View(viewer, data, stores, notes)


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
