"""Voxel size of a TIFF from its OME, ImageJ or resolution-tag metadata, in nm."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import tifffile

# Length units found in OME (PhysicalSize*Unit) and ImageJ ("unit") metadata, in nm. Fiji
# writes micron as "micron" or as a literal backslash-u escape, which tifffile returns as is.
_TO_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3,
          "\\u00B5m": 1e3, "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "Å": 0.1,
          "angstrom": 0.1, "cm": 1e7, "m": 1e9}
# TIFF ResolutionUnit: 2 inch, 3 centimetre (baseline); 4 mm and 5 µm are tifffile's own.
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}

VoxelNm = tuple[float | None, float | None, float | None]


def _ratio_nm(value: Any, factor: float) -> float | None:
    """Pixel size from a (num, den) pixels-per-unit rational tag, in nm."""
    try:
        num, den = value
        return float(den) / float(num) * factor if num and den else None
    except (TypeError, ValueError):
        return None


def voxel_size_nm(tif: tifffile.TiffFile) -> VoxelNm:
    """Voxel size (z, y, x) in nm from OME, ImageJ or resolution-tag metadata; None = unknown."""
    page = tif.pages.first
    try:
        if tif.is_ome and tif.ome_metadata:
            pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
            if pixels is not None:
                a = pixels.attrib
                out: list[float | None] = []
                for k in "ZYX":
                    size, unit = a.get(f"PhysicalSize{k}"), a.get(f"PhysicalSize{k}Unit", "µm")
                    out.append(float(size) * _TO_NM[unit] if size and unit in _TO_NM else None)
                return (out[0], out[1], out[2])
        if tif.is_imagej and tif.imagej_metadata:
            ij = tif.imagej_metadata
            f = _TO_NM.get(str(ij.get("unit", "")))
            if f is None:
                return (None, None, None)
            z = ij.get("spacing")
            return (float(z) * f if z else None,
                    _ratio_nm(page.tags.valueof("YResolution"), f),
                    _ratio_nm(page.tags.valueof("XResolution"), f))
        f2 = _RESUNIT_NM.get(int(page.resolutionunit))
        if f2 is None:
            return (None, None, None)
        return (None, _ratio_nm(page.tags.valueof("YResolution"), f2),
                _ratio_nm(page.tags.valueof("XResolution"), f2))
    except (ET.ParseError, ValueError, TypeError, KeyError):
        # Metadata that cannot be parsed is treated as absent: the voxel size can be given.
        return (None, None, None)
