"""What neuroglancer shows: one layer per store, the view centred and zoomed to fit them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from flows.view_stores import Store

if TYPE_CHECKING:
    import neuroglancer

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
