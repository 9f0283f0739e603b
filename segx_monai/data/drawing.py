"""Vectorised drawing primitives shared by the synthetic data sets (smooth noise fields, distances to polylines)."""

from __future__ import annotations

import numpy as np


def value_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cells: int, extent: float = 1.8) -> np.ndarray:
    """Smooth random field on the square ``[-extent, extent]^2`` with ``cells`` cells a side, sampled at (x, y)."""
    knots = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    gx = np.clip((x + extent) / (2 * extent) * cells, 0, cells - 1e-4)
    gy = np.clip((y + extent) / (2 * extent) * cells, 0, cells - 1e-4)
    ix, iy = gx.astype(int), gy.astype(int)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no visible grid
    top = knots[iy, ix] * (1 - fx) + knots[iy, ix + 1] * fx
    bottom = knots[iy + 1, ix] * (1 - fx) + knots[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def polyline_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every (x, y) to the polyline through ``points`` (N, 2), in the units of the coordinates."""
    points = points.astype(np.float32)
    start, step = points[:-1, :, None, None], np.diff(points, axis=0)[:, :, None, None]
    off_x, off_y = x - start[:, 0], y - start[:, 1]
    along = (off_x * step[:, 0] + off_y * step[:, 1]) / np.maximum((step**2).sum(axis=1), 1e-12)
    along = np.clip(along, 0, 1)
    off_x -= along * step[:, 0]
    off_y -= along * step[:, 1]
    return np.sqrt((off_x * off_x + off_y * off_y).min(axis=0))
