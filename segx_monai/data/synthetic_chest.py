"""Synthetic chest X-rays written in the exact file layout of ChestX-Det10 (and ChestX-Det), for demos and tests.

The output directory looks like the real release, so the one ChestX-Det loader reads both::

    train_data/<int>.png, test_data/<int>.png   8-bit grayscale frontal radiographs, integer names like the release
    train.json, test.json                       ChestX-Det10: [{"file_name", "syms", "boxes"}, ...]
    ChestX_Det_train.json, ChestX_Det_test.json ChestX-Det: the same, with "polygons", one per finding instance
    masks/<int>.png                             both lungs, 0/255 (the real data takes them from another source)
    dicom/<int>.dcm, a few dicom/<int>          the same pictures as DICOM (``dicom=True``), see DICOM_VARIANTS

Each picture has a body outline, a bright mediastinum with spine and heart, ribs and clavicles, two dark lungs with
vessel markings and diaphragm domes. Six of the ten ChestX-Det10 findings are drawn, always inside the lungs, and
decide the labels (:data:`FINDINGS_DRAWN`): Atelectasis (a plate-like band in a lower lung), Consolidation (a large
patchy opacity with blurred edges), Effusion (fluid filling a lung base up to a meniscus), Mass (a dense, sharp-edged
lobulated blob), Nodule (one to three small round spots) and Pneumothorax (a dark crescent without vessel markings
along the apex and lateral wall, edged by the pleural line). Calcification, Emphysema, Fibrosis and Fracture never
appear. Findings are drawn independently, so an image may have several; about a third have none.

Outside the lungs every image may carry confounders (:data:`FINDING_CONFOUNDER`): an "R" or "L" lead marker, a
tube down the mediastinum, a ruler, collimation edges, ECG leads. In the train split each confounder agrees with
its finding's label with probability ``spurious_strength``; in the test split it is drawn independently of the
labels, with the same frequency. A classifier can therefore take the shortcut and look outside the lungs, which
SegX and SegU are meant to reveal. Every annotation entry records the confounders its image carries in one field
beyond the real ones, ``"artefact": ["tube", ...]`` (empty for none; the ChestX-Det indexer keeps it in the datalist,
so that evaluation can score images whose confounders agree with the training fold's association apart from others).

``reversed_set=True`` plans a reversed set instead: test images only (``test.json``, ``ChestX_Det_test.json``,
``test_data/``), named from 100000.png upwards (apart from an ordinary set's five-digit names), and each confounder
disagrees with its finding's label with probability ``spurious_strength``: present when the finding is absent and
absent when it is present. A classifier that learnt the shortcut on an ordinary set scores worse on it than on that
set's test split. Point a bundle's ``test_dataset_dir`` at it to evaluate and interpret on it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from segx_monai.data.chestx_det import finding_masks, polygon_mask
from segx_monai.data.datalist import ARTEFACT_KEY
from segx_monai.data.drawing import polyline_distance, value_noise
from segx_monai.io.dicom_writer import write_dicom_variant

FINDINGS_DRAWN = ("Atelectasis", "Consolidation", "Effusion", "Mass", "Nodule", "Pneumothorax")
# Per-image probability of each finding, drawn independently: (1 - p) multiplied over findings gives ~0.33 no finding.
FINDING_PROBABILITY = np.array([0.15, 0.2, 0.22, 0.12, 0.2, 0.12])
FINDING_CONFOUNDER = {  # the most conspicuous confounders go with the most conspicuous findings
    "Atelectasis": "ruler",
    "Consolidation": "marker_R",
    "Effusion": "tube",
    "Mass": "collimation",
    "Nodule": "marker_L",
    "Pneumothorax": "ecg_leads",
}
CONFOUNDERS = tuple(FINDING_CONFOUNDER.values())
FOLDERS = {"train": "train_data", "test": "test_data"}
MASK_FOLDER, DICOM_FOLDER = "masks", "dicom"
FIRST_NUMBER, NUMBER_RANGE = 10_000, 90_000  # five-digit integer file names, like the real release's

# Encodings of the DICOM copies, taken in turn by the images in plan order (train, then test, by file name): both
# photometric interpretations, 8, 12 and 16 bits, uncompressed and compressed (JPEG baseline for 8 bits only, the
# one lossy one). A window width of 2041 spans 8 * 255 stored steps, so every 8-bit grey level stays exact; 12 bits
# without a window hold them within half a stored step. Every EXTENSIONLESS_EVERY-th file has no file extension, as
# in many archives.
DICOM_VARIANTS = (
    dict(),
    dict(photometric="MONOCHROME1", transfer_syntax="jpeg_baseline"),
    dict(bits=12, transfer_syntax="jpeg_lossless", modality="CR"),
    dict(bits=16, photometric="MONOCHROME1", transfer_syntax="jpeg_ls"),
    dict(bits=16, signed=True, rescale=(0.5, -1024.0), transfer_syntax="jpeg2000"),
    dict(bits=12, window=(1500.5, 2041), transfer_syntax="rle"),
    dict(bits=12, photometric="MONOCHROME1", window=(1030.5, 2041), rescale=(2, -100), transfer_syntax="implicit_le"),
    dict(transfer_syntax="jpeg_baseline", modality="CR"),
    dict(bits=16, photometric="MONOCHROME1", transfer_syntax="rle", modality="CR"),
    dict(bits=12, rescale=(1.0, -1024.0), transfer_syntax="jpeg_ls"),
)
EXTENSIONLESS_EVERY = 8
NIH_PIXEL_SPACING_MM = 0.143  # of the 1024x1024 originals


@dataclass(frozen=True)
class SyntheticChest:
    """One planned image: file name, split, the findings it shows, the confounders it carries, and its pixel seed."""

    file_name: str
    fold: str  # "train" or "test", the release's split
    findings: tuple[str, ...]
    confounders: tuple[str, ...]
    seed: int


def plan_chestx_like(
    n_train: int = 240, n_test: int = 80, seed: int = 0, spurious_strength: float = 0.75, reversed_set: bool = False
) -> list[SyntheticChest]:
    """Draw file names, labels and confounders of every image, without pixels; train then test, by file name.

    ``reversed_set``: ``n_test`` test images (``n_train`` must be 0) with the reversed confounders (module notes).
    """
    if reversed_set and n_train != 0:
        raise ValueError(f"a reversed set has test images only: need n_train = 0, got {n_train}.")
    if n_train < (0 if reversed_set else 1) or n_test < 1 or n_train + n_test > NUMBER_RANGE:
        raise ValueError(f"need n_train, n_test >= 1 and n_train + n_test <= {NUMBER_RANGE}, got {n_train}, {n_test}.")
    if not 0 <= spurious_strength <= 1:
        raise ValueError(f"spurious_strength must lie in [0, 1], got {spurious_strength}.")
    n = n_train + n_test
    rng = np.random.default_rng([seed, 0])
    first = FIRST_NUMBER + NUMBER_RANGE if reversed_set else FIRST_NUMBER  # a reversed set's names have six digits
    numbers = first + rng.choice(NUMBER_RANGE, n, replace=False)
    labels = rng.random((n, len(FINDINGS_DRAWN))) < FINDING_PROBABILITY
    seeds = rng.integers(2**32, size=n)
    confounder_rng = np.random.default_rng([seed, 1])
    agrees = confounder_rng.random(labels.shape) < spurious_strength
    correlated = labels == agrees  # the finding's own confounder when agreeing, its absence when not
    frequency = FINDING_PROBABILITY * spurious_strength + (1 - FINDING_PROBABILITY) * (1 - spurious_strength)
    independent = confounder_rng.random(labels.shape) < frequency
    is_test = np.arange(n) >= n_train
    confounders = ~correlated if reversed_set else np.where(is_test[:, None], independent, correlated)
    images = [
        SyntheticChest(
            file_name=f"{number}.png",
            fold="test" if test else "train",
            findings=tuple(f for f, on in zip(FINDINGS_DRAWN, row) if on),
            confounders=tuple(c for c, on in zip(CONFOUNDERS, present) if on),
            seed=int(s),
        )
        for number, test, row, present, s in zip(numbers, is_test, labels, confounders, seeds)
    ]
    return sorted(images, key=lambda image: (image.fold != "train", int(Path(image.file_name).stem)))


# ----------------------------------------------------------------------------------------------------------- pixels
# Lengths are in units of half the image side, x to the right (image columns) and y down (rows), so that a picture
# looks the same at any size. The patient's right lung is on the image's left (side -1), as in a PA view.

BACKGROUND, TISSUE, LUNG = 0.05, 0.42, 0.13


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates of a square image in length units, and the length of one pixel."""

    x: np.ndarray
    y: np.ndarray
    pixel: float
    size: int

    @classmethod
    def of(cls, size: int) -> _Grid:
        y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) * (2 / size) - 1
        return cls(x, y, 2 / size, size)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Length-unit points (N, 2) as integer pixel indices [x, y] inside the image."""
        return np.clip(np.rint((points + 1) * self.size / 2 - 0.5), 0, self.size - 1).astype(int)

    def window(self, points: np.ndarray, margin: float) -> tuple[slice, slice]:
        """Rows and columns of the pixels within ``margin`` of the bounding box of length-unit ``points`` (N, 2)."""
        low, high = self.to_pixels(points.min(axis=0) - margin), self.to_pixels(points.max(axis=0) + margin) + 1
        return slice(low[1], high[1]), slice(low[0], high[0])


@dataclass(frozen=True)
class _Lung:
    """A lung outline in length units (its first ``n_upper`` points go from the medial top over the apex), its mask."""

    side: int
    outline: np.ndarray  # (N, 2)
    n_upper: int
    mask: np.ndarray  # (size, size) bool


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by ``sigma`` pixels as a sum of shifted copies along each axis, edges repeated.

    Written without matrix products: next to torch's threads, small BLAS calls can be a hundred times slower.
    """
    radius = max(1, int(np.ceil(3 * sigma)))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    blurred = image.astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(blurred, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        length = blurred.shape[axis]
        shifted = (padded.take(np.arange(k, k + length), axis=axis) for k in range(len(weights)))
        blurred = sum(np.float32(w) * copy for w, copy in zip(weights, shifted))
    return blurred


def _lungs(rng: np.random.Generator, grid: _Grid) -> list[_Lung]:
    """Both lungs: apex, lateral wall, costophrenic angle, diaphragm dome, medial border (the heart's on the left)."""
    scale = rng.uniform(0.93, 1.05, 2)
    shift = rng.normal(0, 0.02, 2)
    t = np.linspace(0, 1, 12)[1:, None]
    lungs = []
    for side in (-1, 1):
        apex_x, apex_y = rng.uniform(0.3, 0.36), rng.uniform(-0.74, -0.66)
        top_x = rng.uniform(0.13, 0.16)  # where the apex meets the mediastinum
        angle_x, angle_y = rng.uniform(0.78, 0.84), rng.uniform(0.38, 0.46) + 0.03 * (side > 0)
        wall_x, wall_y = angle_x - 0.05, apex_y + rng.uniform(0.3, 0.38)
        base_x = rng.uniform(0.28, 0.34) if side > 0 else rng.uniform(0.14, 0.18)  # the heart pushes the left lung out
        base_y = angle_y - (rng.uniform(0.1, 0.14) if side > 0 else rng.uniform(0.04, 0.08))
        dome = rng.uniform(0.05, 0.09)
        theta = np.linspace(np.pi, 0, 21)  # from the medial top (pi) over the apex (pi/2) to the lateral side (0)
        radius_x = np.where(np.cos(theta) < 0, apex_x - top_x, wall_x - apex_x)
        upper = np.stack([apex_x + np.cos(theta) * radius_x, wall_y - np.sin(theta) * (wall_y - apex_y)], axis=1)
        wall = np.hstack([wall_x + (angle_x - wall_x) * t + 0.03 * np.sin(np.pi * t), wall_y + (angle_y - wall_y) * t])
        dome_y = angle_y + (base_y - angle_y) * t - dome * np.sin(np.pi * t)
        diaphragm = np.hstack([angle_x + (base_x - angle_x) * t, dome_y])
        medial_x = top_x + (base_x - top_x) * np.cos(np.pi / 2 * t) ** 1.5
        medial = np.hstack([medial_x, base_y + (wall_y - base_y) * t])[:-1]
        outline = np.vstack([upper, wall, diaphragm, medial]) * [side, 1] * scale + shift
        mask = polygon_mask(grid.to_pixels(outline), (grid.size, grid.size)).astype(bool)
        lungs.append(_Lung(side, outline, len(upper) + len(wall) // 2, mask))
    return lungs


# ------------------------------------------------------------------------------------------------------ findings


def _random_point(rng: np.random.Generator, lung: _Lung, grid: _Grid, lower: bool = False) -> np.ndarray:
    """A pixel centre of the lung (of its lower half if ``lower``), in length units."""
    rows, cols = np.nonzero(lung.mask)
    if lower:
        keep = rows >= np.median(rows)
        rows, cols = rows[keep], cols[keep]
    pick = rng.integers(len(rows))
    return (np.array([cols[pick], rows[pick]]) + 0.5) * grid.pixel - 1


def _blob(
    rng: np.random.Generator,
    centre: np.ndarray,
    radius: float,
    n: int,
    wobble: float,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """An (n, 2) outline around ``centre``: an ellipse of the given radius and aspect whose radius wobbles smoothly."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    orders = np.arange(2, 5)
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    r = radius * (1 + wobble * np.cos(orders[:, None] * theta + phases[:, None]).sum(0) / len(orders) ** 0.5)
    u, v = r * np.cos(theta), aspect * r * np.sin(theta)
    return centre + np.stack([u * np.cos(angle) - v * np.sin(angle), u * np.sin(angle) + v * np.cos(angle)], axis=1)


def _nodule(rng, lung, grid, attempt):
    """A small round spot, 0.045 to 0.065 in radius."""
    return _blob(rng, _random_point(rng, lung, grid), rng.uniform(0.045, 0.065) * 0.97**attempt, 12, 0.06), None


def _mass(rng, lung, grid, attempt):
    """A large, dense, sharp-edged lobulated blob, 0.09 to 0.13 in radius."""
    return _blob(rng, _random_point(rng, lung, grid), rng.uniform(0.09, 0.13) * 0.97**attempt, 16, 0.12), None


def _consolidation(rng, lung, grid, attempt):
    """An irregular region, 0.15 to 0.22 in radius, painted patchy with blurred edges."""
    radius = rng.uniform(0.15, 0.22) * 0.97**attempt
    return _blob(rng, _random_point(rng, lung, grid), radius, 16, 0.25, rng.uniform(0.8, 1.3)), None


def _atelectasis(rng, lung, grid, attempt):
    """A plate-like band in the lower lung: a thin ellipse, near horizontal."""
    length = rng.uniform(0.15, 0.22) * 0.97**attempt
    aspect = rng.uniform(0.035, 0.05) / length
    centre = _random_point(rng, lung, grid, lower=True)
    return _blob(rng, centre, length, 16, 0.03, aspect, rng.uniform(-0.35, 0.35)), None


def _effusion(rng, lung, grid, attempt):
    """The lung base below a meniscus: a line rising towards the lateral wall, the lung outline clipped by it."""
    lateral = lung.outline[:, 0] * lung.side  # distance from the midline
    level = lung.outline[:, 1].max() - rng.uniform(0.28, 0.4) - 0.02 * attempt
    rise = rng.uniform(0.04, 0.1) / np.ptp(lateral)
    height = lung.outline[:, 1] - (level - rise * (lateral - lateral.min()))  # >= 0 below the meniscus
    return _clip_below(lung.outline, height), None


def _clip_below(outline: np.ndarray, height: np.ndarray) -> np.ndarray:
    """The part of a polygon where the linear ``height`` (known at its vertices) is >= 0, by Sutherland-Hodgman."""
    nxt = np.roll(np.arange(len(outline)), -1)
    points = []
    for i, j in zip(range(len(outline)), nxt):
        if height[i] >= 0:
            points.append(outline[i])
        if (height[i] >= 0) != (height[j] >= 0):
            points.append(outline[i] + (outline[j] - outline[i]) * height[i] / (height[i] - height[j]))
    return np.array(points)


def _pneumothorax(rng, lung, grid, attempt):
    """A crescent along the apex and upper lateral wall, deepest in its middle, and its inner edge (the pleura)."""
    arc = lung.outline[rng.integers(3, 7) : lung.n_upper]
    inward = lung.outline.mean(axis=0) - arc
    inward /= np.linalg.norm(inward, axis=1, keepdims=True)
    depth = rng.uniform(0.07, 0.12) * 0.95**attempt * np.sin(np.linspace(0, np.pi, len(arc))) ** 0.6
    pleura = arc + inward * depth[:, None]
    return np.vstack([arc, pleura[::-1]]), pleura


FindingMaker = Callable[[np.random.Generator, _Lung, _Grid, int], tuple[np.ndarray, np.ndarray | None]]
FINDING_MAKERS: dict[str, FindingMaker] = {
    "Atelectasis": _atelectasis, "Consolidation": _consolidation, "Effusion": _effusion,
    "Mass": _mass, "Nodule": _nodule, "Pneumothorax": _pneumothorax,
}  # fmt: skip
MAX_ATTEMPTS = 60


def _place_findings(rng: np.random.Generator, findings: Sequence[str], lungs: list[_Lung], grid: _Grid) -> list[tuple]:
    """Instances ``(finding, polygon in pixels, pleural line in length units or None)`` inside the lungs.

    One instance per finding in a random lung, except one to three nodules and, one time in four, an effusion in
    each lung. A shape is redrawn (smaller, or for an effusion deeper) until its vertices and its box centre lie
    in the lung.
    """
    instances = []
    for finding in findings:
        if finding == "Nodule":
            sides = rng.integers(2, size=rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        elif finding == "Effusion" and rng.random() < 0.25:
            sides = np.array([0, 1])
        else:
            sides = rng.integers(2, size=1)
        for side in sides:
            lung = lungs[side]
            for attempt in range(MAX_ATTEMPTS):
                outline, line = FINDING_MAKERS[finding](rng, lung, grid, attempt)
                polygon = grid.to_pixels(outline)
                centre = np.rint((polygon.min(axis=0) + polygon.max(axis=0)) / 2).astype(int)
                if lung.mask[polygon[:, 1], polygon[:, 0]].all() and lung.mask[centre[1], centre[0]]:
                    break
            else:
                raise RuntimeError(f"could not place a {finding} inside the lung in {MAX_ATTEMPTS} attempts.")
            instances.append((finding, polygon, line))
    return instances


# -------------------------------------------------------------------------------------------------- painting


def _paint_anatomy(
    rng: np.random.Generator, grid: _Grid, lungs: list[_Lung]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chest without findings, the soft lung mask (0 to 1), and the vessel markings to add inside the lungs."""
    x, y, pixel = grid.x, grid.y, grid.pixel
    lateral = np.abs(x)
    body_half_width = rng.uniform(0.92, 0.98)
    body = np.clip((1 - (lateral / body_half_width) ** 4 - (np.abs(y - 0.15) / 1.1) ** 4) / 0.08, 0, 1)
    body = np.maximum(body, np.clip((0.24 - lateral) / 0.03, 0, 1) * (y < -0.5))  # the neck
    picture = BACKGROUND + (TISSUE - BACKGROUND + 0.06 * np.clip(-y, 0, 1) - 0.05 * lateral**2) * body
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * y / rng.uniform(0.12, 0.14) + rng.uniform(0, 2 * np.pi))
    picture += (0.08 + 0.05 * vertebrae) * np.clip((0.065 - lateral) / (2 * pixel), 0, 1) * body  # spine
    heart = ((x - 0.08) / 0.3) ** 2 + ((y - 0.32) / 0.22) ** 2
    picture += 0.06 * np.clip((1 - heart) / 0.2, 0, 1)

    lung_mask = (lungs[0].mask | lungs[1].mask).astype(np.float32)
    lung_soft = np.clip(_blur(lung_mask, grid.size / 128), 0, 1)
    lung_level = LUNG + 0.05 * (y + 0.7) + 0.025 * value_noise(rng, x, y, 10)  # denser towards the bases
    picture += (lung_level - picture) * lung_soft
    apex_y, base_y = min(lung.outline[:, 1].min() for lung in lungs), max(lung.outline[:, 1].max() for lung in lungs)
    picture += _ribs(rng, grid, apex_y, base_y, body_half_width) * body
    return picture, lung_soft, _vessels(rng, grid, lungs)


def _ribs(rng: np.random.Generator, grid: _Grid, apex_y: float, base_y: float, body_half_width: float) -> np.ndarray:
    """Brightness of ten posterior ribs (arcs falling away from the spine, brighter edges) and the two clavicles."""
    x, y, pixel = grid.x, grid.y, grid.pixel
    lateral = np.abs(x)
    from_spine = np.maximum(lateral - 0.06, 0)
    spacing = rng.uniform(0.115, 0.13)
    along = (y - apex_y + 0.02 + 0.15 * from_spine - 0.65 * from_spine**2) / spacing  # 0, 1, ... on rib centre lines
    gap = np.abs(along - np.clip(np.rint(along), 0, 9)) * spacing
    half_width = rng.uniform(0.02, 0.026)
    band = np.clip((half_width - gap) / pixel + 0.5, 0, 1)
    cortex = np.exp(-(((gap - half_width + 0.5 * pixel) / pixel) ** 2))
    extent = np.clip((lateral - 0.06) / 0.03, 0, 1) * np.clip((body_half_width - 0.03 - lateral) / 0.05, 0, 1)
    extent *= np.clip((base_y + 0.08 - y) / 0.1, 0, 1)  # ribs fade into the abdomen's soft tissue
    clavicle = np.array([[0.08, apex_y - 0.04], [0.35, apex_y - 0.06], [0.62, apex_y - 0.16]])
    clavicle += rng.normal(0, 0.015, clavicle.shape)
    clavicles = np.clip((0.026 - polyline_distance(lateral, y, clavicle)) / pixel + 0.5, 0, 1)
    return (0.045 * band + 0.03 * cortex * (gap < half_width + pixel)) * extent + 0.09 * clavicles


def _vessels(rng: np.random.Generator, grid: _Grid, lungs: list[_Lung]) -> np.ndarray:
    """Vessel markings: a dense hilum and branches fanning out from it, thinning and fading towards the periphery."""
    x, y = grid.x, grid.y
    vessels = np.zeros_like(x)
    for lung in lungs:
        hilum = np.array([0.2 * lung.side, rng.uniform(-0.08, 0.0)])
        from_hilum = np.hypot(x - hilum[0], y - hilum[1])
        vessels += 0.05 * np.exp(-((from_hilum / 0.1) ** 2))
        for _ in range(8):
            angle = (np.pi if lung.side < 0 else 0) + lung.side * rng.uniform(-1.3, 1.4)
            length = rng.uniform(0.3, 0.55)
            points = hilum + np.outer([0.1, 0.4, 0.7, 1], length * np.array([np.cos(angle), np.sin(angle)]))
            points[1:] += rng.normal(0, 0.025, (3, 2))
            near = grid.window(points, 0.06)  # beyond it a branch adds less than 1e-5
            reach = np.clip(from_hilum[near] / length, 0, 1)
            width = 0.02 - 0.013 * reach
            vessels[near] += 0.06 * np.exp(-((polyline_distance(x[near], y[near], points) / width) ** 2)) * (1 - reach)
    return vessels


FINDING_BRIGHTNESS = {"Atelectasis": 0.26, "Consolidation": 0.3, "Effusion": 0.3, "Mass": 0.34, "Nodule": 0.32}
EDGE_BLUR = {"Consolidation": 1.6, "Effusion": 1.5}  # in pixels at 128 x 128; sharp-edged (0.6) otherwise


def _paint_findings(
    rng: np.random.Generator,
    grid: _Grid,
    picture: np.ndarray,
    lung_soft: np.ndarray,
    vessels: np.ndarray,
    instances: list[tuple],
    masks: np.ndarray,
) -> np.ndarray:
    """Add the vessels, hidden where fluid, air or consolidation fill the lung, and the findings' opacities."""
    soft = {
        f: _blur(m, EDGE_BLUR.get(f, 0.6) * grid.size / 128) if m.any() else np.zeros_like(picture)
        for f, m in zip(FINDINGS_DRAWN, masks)
    }
    hidden = np.clip(soft["Effusion"] + soft["Pneumothorax"] + 0.7 * soft["Consolidation"], 0, 1)
    picture = picture + vessels * lung_soft * (1 - hidden)
    patchy = np.clip(0.75 + 0.4 * value_noise(rng, grid.x, grid.y, 14), 0.4, 1)
    opacity = sum(FINDING_BRIGHTNESS[f] * soft[f] * (patchy if f == "Consolidation" else 1) for f in FINDING_BRIGHTNESS)
    picture += (opacity - 0.09 * soft["Pneumothorax"]) * lung_soft
    for _, _, pleura in instances:
        if pleura is not None:
            line = np.exp(-((polyline_distance(grid.x, grid.y, pleura) / (0.7 * grid.pixel)) ** 2))
            picture += 0.16 * line * lung_soft
    return picture


GLYPHS = {  # lead markers, 4 x 7 blocks
    "R": ("1110", "1001", "1001", "1110", "1100", "1010", "1001"),
    "L": ("1000", "1000", "1000", "1000", "1000", "1000", "1111"),
}
MARKER_BRIGHTNESS = 0.93  # radio-opaque: lead letters, tube stripes, ruler, ECG snaps, unexposed collimated border


def _glyph(grid: _Grid, letter: str, left: float, top: float, cell: float) -> np.ndarray:
    """Opacity of a block letter whose top-left corner is at (left, top), ``cell`` a block's side."""
    bitmap = np.array([[c == "1" for c in line] for line in GLYPHS[letter]], dtype=np.float32)
    col = np.floor((grid.x - left) / cell).astype(int)
    row = np.floor((grid.y - top) / cell).astype(int)
    inside = (row >= 0) & (row < bitmap.shape[0]) & (col >= 0) & (col < bitmap.shape[1])
    return np.where(inside, bitmap[np.clip(row, 0, bitmap.shape[0] - 1), np.clip(col, 0, bitmap.shape[1] - 1)], 0)


def _line(grid: _Grid, points: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased opacity of a polyline of the given half width."""
    return np.clip((half_width - polyline_distance(grid.x, grid.y, points)) / grid.pixel + 0.5, 0, 1)


def _confounder_opacity(rng: np.random.Generator, grid: _Grid, confounder: str) -> np.ndarray:
    """Opacity of one confounder, placed where the lungs never are: corners, midline, bottom and side edges."""
    x, y, pixel = grid.x, grid.y, grid.pixel
    if confounder in ("marker_R", "marker_L"):
        cell = rng.uniform(0.036, 0.042)
        left = rng.uniform(-0.96, -0.9) if confounder == "marker_R" else rng.uniform(0.73, 0.78)
        return _glyph(grid, confounder[-1], left, rng.uniform(-0.97, -0.92), cell)
    if confounder == "tube":  # down the mediastinum into the stomach, with a radio-opaque stripe
        points = np.array([[0.0, -1.05], [0.0, -0.55], [0.02, 0.1], [0.04, 0.55], [0.22, 0.74], [0.34, 0.66]])
        points += rng.uniform(-0.03, 0.03, points.shape)
        return 0.85 * _line(grid, points, 0.012)
    if confounder == "ruler":  # a bar with a tick every 0.07 units, a long one every fifth
        bar_y, offset = rng.uniform(0.86, 0.9), rng.uniform(0, 0.07)
        tick = np.round((x - offset) / 0.07)
        tick_length = np.where(tick % 5 == 0, 0.08, 0.04)
        on_tick = (np.abs(x - offset - 0.07 * tick) < 0.6 * pixel) & (y > bar_y) & (y < bar_y + tick_length)
        bar = np.abs(y - bar_y) < max(0.012, pixel)
        return 0.9 * ((bar | on_tick) & (np.abs(x) < 0.75))
    if confounder == "collimation":  # unexposed, hence bright, borders left and right, slightly tilted
        left = -1 + rng.uniform(0.06, 0.1) + rng.uniform(-0.03, 0.03) * y
        right = 1 - rng.uniform(0.06, 0.1) + rng.uniform(-0.03, 0.03) * y
        return 0.85 * np.clip(np.maximum(left - x, x - right) / pixel + 0.5, 0, 1)
    if confounder == "ecg_leads":  # three snaps (shoulders, upper abdomen), each with a wire to the edge
        opacity = np.zeros_like(x)
        for snap in np.array([[-0.68, -0.84], [0.68, -0.84], [0.62, 0.8]]) + rng.uniform(-0.03, 0.03, (3, 2)):
            radius = np.hypot(x - snap[0], y - snap[1])
            ring = np.clip((0.013 - np.abs(radius - 0.04)) / pixel + 0.5, 0, 1)
            wire = np.array([snap, snap * [1.2, 1.06] + rng.uniform(-0.05, 0.05, 2), snap * [1.6, 1.2]])
            opacity = np.maximum.reduce([opacity, ring, radius < 0.015, 0.8 * _line(grid, wire, 0.006)])
        return opacity
    raise ValueError(f"unknown confounder {confounder!r}; expected one of {CONFOUNDERS}.")


def render_chestx_like(image: SyntheticChest, image_size: int = 128) -> tuple[np.ndarray, np.ndarray, dict]:
    """The picture of one planned image: ``(uint8 (size, size), lung mask bool (size, size), ChestX-Det entry)``.

    The entry has ``file_name``, ``syms``, ``boxes`` and ``polygons`` in pixel indices of the picture. Anatomy,
    findings, confounders and noise come from separate streams of the image's seed, so that changing the
    confounders changes no pixel of the lungs.
    """
    size = _check_image_size(image_size)
    grid = _Grid.of(size)
    anatomy_rng, findings_rng, confounder_rng, noise_rng = (np.random.default_rng([image.seed, k]) for k in range(4))
    lungs = _lungs(anatomy_rng, grid)
    picture, lung_soft, vessels = _paint_anatomy(anatomy_rng, grid, lungs)
    instances = _place_findings(findings_rng, image.findings, lungs, grid)
    entry = {
        "file_name": image.file_name,
        "syms": [finding for finding, _, _ in instances],
        "boxes": [[*polygon.min(axis=0).tolist(), *polygon.max(axis=0).tolist()] for _, polygon, _ in instances],
        "polygons": [polygon.tolist() for _, polygon, _ in instances],
    }
    masks = finding_masks(entry, (size, size), FINDINGS_DRAWN)
    picture = _paint_findings(findings_rng, grid, picture, lung_soft, vessels, instances, masks)

    lung_mask = lungs[0].mask | lungs[1].mask
    away_from_lungs = _blur(lung_mask.astype(np.float32), 1.5 * size / 128) < 0.01
    for confounder in image.confounders:
        opacity = _confounder_opacity(confounder_rng, grid, confounder) * away_from_lungs
        picture += (MARKER_BRIGHTNESS - picture) * opacity
    picture = picture * noise_rng.uniform(0.92, 1.08) + noise_rng.uniform(-0.03, 0.03)
    picture += noise_rng.normal(0, 0.012, picture.shape)
    return np.clip(np.rint(picture * 255), 0, 255).astype(np.uint8), lung_mask, entry


def _check_image_size(image_size: int) -> int:
    """Validate the side of the square images; below 32 pixels ribs, nodules and markers are not drawable."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer of at least 32 pixels, got {image_size!r}.")
    return int(image_size)


# ------------------------------------------------------------------------------------------------------ writing


def dicom_copy(index: int, image: SyntheticChest) -> tuple[str, dict]:
    """File name (in ``dicom/``) and write_dicom_variant options of the DICOM copy of the ``index``-th image."""
    stem = Path(image.file_name).stem
    name = stem if index % EXTENSIONLESS_EVERY == EXTENSIONLESS_EVERY - 1 else f"{stem}.dcm"
    return name, DICOM_VARIANTS[index % len(DICOM_VARIANTS)]


def _write_dicom(picture: np.ndarray, path: Path, image: SyntheticChest, options: dict) -> None:
    """Write the DICOM copy with identifiers derived from the image's seed, so that files are reproducible."""
    uids = {
        f"{role}_uid": generate_uid(entropy_srcs=["segx-monai synthetic chest", str(image.seed), image.file_name, role])
        for role in ("study", "series", "sop")
    }
    spacing = NIH_PIXEL_SPACING_MM * 1024 / picture.shape[0]
    patient_id = f"SYN{Path(image.file_name).stem}"
    write_dicom_variant(picture, path, **options, patient_id=patient_id, pixel_spacing=(spacing, spacing), **uids)


def write_chestx_like(
    images: Sequence[SyntheticChest], out_dir: str | Path, image_size: int = 128, dicom: bool = True
) -> Path:
    """Render planned images and write them, their lung masks and annotation files in the ChestX-Det10 layout (the
    folder and annotation files of the folds that have images), each entry with the image's confounders."""
    size = _check_image_size(image_size)
    root = Path(out_dir)
    entries: dict[str, list[dict]] = {fold: [] for fold in FOLDERS if any(image.fold == fold for image in images)}
    for folder in (*(FOLDERS[fold] for fold in entries), MASK_FOLDER, *([DICOM_FOLDER] if dicom else [])):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        picture, lung_mask, entry = render_chestx_like(image, size)
        Image.fromarray(picture, "L").save(root / FOLDERS[image.fold] / image.file_name)
        Image.fromarray(lung_mask.astype(np.uint8) * 255, "L").save(root / MASK_FOLDER / image.file_name)
        entries[image.fold].append({**entry, ARTEFACT_KEY: list(image.confounders)})
        if dicom:
            name, options = dicom_copy(index, image)
            _write_dicom(picture, root / DICOM_FOLDER / name, image, options)
    for fold, fold_entries in entries.items():
        with open(root / f"{fold}.json", "w") as f:  # ChestX-Det10 has no polygons
            json.dump([{k: e[k] for k in ("file_name", "syms", "boxes", ARTEFACT_KEY)} for e in fold_entries], f)
        with open(root / f"ChestX_Det_{fold}.json", "w") as f:
            json.dump(fold_entries, f)
    return root


def generate_chestx_like(
    out_dir: str | Path,
    n_train: int = 240,
    n_test: int = 80,
    image_size: int = 128,
    seed: int = 0,
    spurious_strength: float = 0.75,
    dicom: bool = True,
    reversed_set: bool = False,
) -> Path:
    """Write a synthetic ChestX-Det10 / ChestX-Det set (with DICOM copies if ``dicom``) to ``out_dir``; return it.

    The same arguments give byte-identical files; files of the same names already in ``out_dir`` are overwritten.
    ``reversed_set`` (with ``n_train=0``): a reversed test set (module notes), to write with another ``seed`` than
    the set the model is trained on.
    """
    _check_image_size(image_size)
    images = plan_chestx_like(n_train, n_test, seed, spurious_strength, reversed_set)
    return write_chestx_like(images, out_dir, image_size, dicom)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m segx_monai.data.synthetic_chest --out DIR --n-train 240 --n-test 80 --size 128``
    (``--reversed --seed 1``: a reversed test set of ``--n-test`` images)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (the ChestX-Det10 root)")
    parser.add_argument("--n-train", type=int, help="train images (default 240; 0 with --reversed)")
    parser.add_argument("--n-test", type=int, default=80)
    parser.add_argument("--size", type=int, default=128, help="side of the square images in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spurious-strength", type=float, default=0.75)
    parser.add_argument("--no-dicom", action="store_true", help="do not write the DICOM copies")
    parser.add_argument(
        "--reversed", action="store_true",
        help="a reversed test set: test images only, each confounder disagreeing with its finding (use another --seed)",
    )
    args = parser.parse_args(argv)
    if args.n_train is None:
        args.n_train = 0 if args.reversed else 240
    try:
        _check_image_size(args.size)
        images = plan_chestx_like(args.n_train, args.n_test, args.seed, args.spurious_strength, args.reversed)
    except ValueError as error:
        parser.error(str(error))
    write_chestx_like(images, args.out, args.size, dicom=not args.no_dicom)
    counts = {f: sum(f in image.findings for image in images) for f in FINDINGS_DRAWN}
    none = sum(not image.findings for image in images)
    print(
        f"wrote {args.n_train} train and {args.n_test} test images ({args.size}x{args.size}) to {args.out}: "
        + ", ".join(f"{f} {n}" for f, n in counts.items()) + f", no finding {none}"
    )


if __name__ == "__main__":
    main()
