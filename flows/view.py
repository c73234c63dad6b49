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

Here: the data servers and the running view. Beside it: :mod:`flows.view_stores` (which
stores), :mod:`flows.view_state` (layers and view), :mod:`flows.view_screenshot`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flows.view_screenshot import BROWSER_ARGS, CHROMIUM, ScreenshotError, take_screenshot
from flows.view_state import PROBABILITY_SHADER, label_shader, layer_for, viewer_state
from flows.view_stores import FOLDERS, KIND_FOLDER, Store, find_stores

if TYPE_CHECKING:
    import neuroglancer

__all__ = ["BROWSER_ARGS", "CHROMIUM", "FOLDERS", "KIND_FOLDER", "PROBABILITY_SHADER", "DataServer",
           "ScreenshotError", "Store", "View", "find_stores", "label_shader", "layer_for", "open_view",
           "take_screenshot", "viewer_state"]


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
