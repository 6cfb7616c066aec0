"""A heat map written as a PNG with zlib alone (no plotting library needed)."""
from __future__ import annotations

import struct
import zlib

import numpy as np

# viridis, sampled at 6 points and interpolated linearly
_STOPS = np.array([[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37]], dtype=float)


def _colour(values: np.ndarray) -> np.ndarray:
    x = np.clip(values, 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_STOPS) - 2)
    t = (x - lo)[..., None]
    return (_STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t).astype(np.uint8)


def write_heatmap(path: str, grid: np.ndarray, cell: int = 16, vmax: float = 1.0) -> None:
    """grid [rows, cols] in [0, vmax] (rows: layers, top to bottom; cols: heads); NaN cells are grey;
    a colour bar 0..vmax (left to right) under the map."""
    rows, cols = grid.shape
    rgb = _colour(np.nan_to_num(grid / vmax, nan=0.0))
    rgb[np.isnan(grid)] = 128
    image = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    bar = _colour(np.linspace(0, 1, image.shape[1]))[None].repeat(cell, axis=0)
    gap = np.full((cell // 2, image.shape[1], 3), 255, dtype=np.uint8)
    image = np.concatenate([image, gap, bar], axis=0)
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
