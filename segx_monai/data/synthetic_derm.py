"""Synthetic dermoscopy images written in the exact file layout of HAM10000, for demos and tests.

The output directory looks like the real release, so the one HAM10000 loader reads both::

    HAM10000_metadata.csv                      lesion_id,image_id,dx,dx_type,age,sex,localization
    HAM10000_images_part_1/ISIC_00xxxxx.jpg    RGB JPEG (lower half of the image ids)
    HAM10000_images_part_2/ISIC_00xxxxx.jpg    RGB JPEG (upper half)
    HAM10000_segmentations_lesion_tschandl/ISIC_00xxxxx_segmentation.png   8-bit, 0/255, the lesion

Each of the seven classes (nv, mel, bkl, bcc, akiec, vasc, df) has its own lesion colour, border, shape and internal
pattern; a lesion has one to three images (small rotation, shift, scale and brightness changes), and the mask is
exactly the lesion. Class counts follow the real imbalance, softened (square root of the real counts) so that a small
demo stays learnable, and are raised where needed so that :func:`segx_monai.data.splits.split_by_group` puts every
class in every split (in training and test only, for sets of a few dozen images whose validation split is too small
to hold seven classes).

Every image also carries one acquisition artefact outside the lesion (a ruler along an edge, ink dots or a marker ring
in a corner, the dark corners of a dermoscope's field), and some carry hairs, which may cross the lesion. In the
training and validation splits, drawn with ``split_by_group`` on ``(lesion_id, dx)`` exactly as the bundles draw
them, each class shows its own artefact (:data:`CLASS_ARTEFACT`) with probability ``spurious_strength``; in the test
split the artefact is drawn independently of the class. A classifier trained on these images can therefore take the
shortcut and look at the artefact rather than the lesion, and its explanation drifts outside the lesion: the
situation that SegX (explanation restricted to the lesion) and SegU (how much of the explanation lies in the lesion)
exist for. A share ``plain_fraction`` of the lesions, drawn independently of class and split, is painted with one
plain look common to all classes (:func:`_paint_plain`: a muted, evenly pigmented lesion of common size and border), so
that in training only their artefact tells their class: a classifier learns the shortcut for them, and on the test
fold, where the artefact is another class's for six images in seven, it gets most of them wrong for that reason.
The metadata CSV records each image's artefact in one column beyond the real ones, ``artefact`` (the HAM10000 indexer
keeps it in the datalist, so that evaluation can score images whose artefact agrees with the training fold's
artefact-class association apart from the others); :func:`plan_ham_like` also returns each image's look.

``reversed_set=True`` plans a reversed set instead: every image is a test image, with ids after the real release's
(ISIC_0034321 upwards, apart from an ordinary set's of up to 10,015 images), and each class shows the artefact of the
next class in :data:`CLASSES` order (:data:`REVERSED_SHIFT`, a derangement of :data:`CLASS_ARTEFACT`) with
probability ``spurious_strength``: a classifier that learnt the shortcut on an ordinary set scores worse on it than on
that set's test fold. Point a bundle's ``test_dataset_dir`` at it to evaluate and interpret on it.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image

from segx_monai.data.datalist import ARTEFACT_KEY
from segx_monai.data.drawing import polyline_distance, value_noise
from segx_monai.data.splits import FOLDS, SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, split_by_group

METADATA_FILE = "HAM10000_metadata.csv"
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
MASK_FOLDER = "HAM10000_segmentations_lesion_tschandl"

# Image counts per diagnosis in the real HAM10000 release.
HAM10000_CLASS_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
CLASSES = tuple(HAM10000_CLASS_COUNTS)

# The artefact each class shows with probability ``spurious_strength`` in the training and validation splits.
CLASS_ARTEFACT = {
    "nv": "ruler_bottom",
    "mel": "ink_dots_top_left",
    "bkl": "marker_ring_top_right",
    "bcc": "vignette",
    "akiec": "ruler_left",
    "vasc": "ink_dots_bottom_right",
    "df": "marker_ring_bottom_left",
}
ARTEFACTS = tuple(CLASS_ARTEFACT.values())
# a reversed set's classes show the artefact of the class this many places after their own in CLASSES order
REVERSED_SHIFT = 1
# The defaults: a strong shortcut, and one lesion in seven that only its artefact tells apart in training, so that a
# demo classifier errs on about a fifth to a third of the test fold, mostly where the artefact is another class's.
SPURIOUS_STRENGTH, PLAIN_FRACTION = 0.95, 0.15
ARTEFACT_KIND_AND_PLACE = {  # what is drawn, and at which edge or corner
    "ruler_bottom": ("ruler", "bottom"),
    "ruler_left": ("ruler", "left"),
    "ink_dots_top_left": ("ink_dots", "top_left"),
    "ink_dots_bottom_right": ("ink_dots", "bottom_right"),
    "marker_ring_top_right": ("marker_ring", "top_right"),
    "marker_ring_bottom_left": ("marker_ring", "bottom_left"),
    "vignette": ("vignette", "corners"),
}

FIRST_IMAGE_NUMBER = 24306  # the real image ids run from ISIC_0024306 upwards
REVERSED_FIRST_IMAGE_NUMBER = FIRST_IMAGE_NUMBER + 10_015  # a reversed set's: after the real release's 10,015 images
DX_TYPES = {  # (values, probabilities) per class, after the real file: melanomas are all histopathology-confirmed
    "nv": (("follow_up", "histo", "consensus"), (0.55, 0.40, 0.05)),
    "mel": (("histo",), (1.0,)),
    "bkl": (("histo", "consensus", "confocal"), (0.55, 0.30, 0.15)),
    "bcc": (("histo",), (1.0,)),
    "akiec": (("histo",), (1.0,)),
    "vasc": (("histo", "consensus"), (0.5, 0.5)),
    "df": (("histo", "consensus"), (0.5, 0.5)),
}
MEAN_AGE = {"nv": 42, "mel": 60, "bkl": 58, "bcc": 66, "akiec": 67, "vasc": 50, "df": 52}
MISSING_AGE_PROBABILITY = 0.02
SEXES = (("male", "female", "unknown"), (0.54, 0.45, 0.01))
LOCALIZATIONS = {  # real vocabulary and counts
    "back": 2192, "lower extremity": 2077, "trunk": 1404, "upper extremity": 1118, "abdomen": 1022, "face": 745,
    "chest": 407, "foot": 319, "unknown": 234, "neck": 168, "scalp": 128, "hand": 90, "ear": 56, "genital": 48,
    "acral": 7,
}  # fmt: skip


@dataclass(frozen=True)
class SyntheticImage:
    """One planned image: its metadata row, folder, split, artefact, and the seeds its pixels are drawn from."""

    lesion_id: str
    image_id: str
    dx: str
    dx_type: str
    age: float | None
    sex: str
    localization: str
    image_folder: str
    fold: str
    artefact: str
    plain: bool  # painted with the look shared by all classes (:func:`_paint_plain`), not its class's
    lesion_seed: int  # the lesion's appearance, shared by all its images
    image_seed: int  # this view: pose, skin, artefact placement, hairs


def plan_ham_like(
    n_images: int = 700,
    seed: int = 0,
    split_seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    spurious_strength: float = SPURIOUS_STRENGTH,
    images_per_lesion: tuple[int, int] = (1, 3),
    plain_fraction: float = PLAIN_FRACTION,
    reversed_set: bool = False,
) -> list[SyntheticImage]:
    """Draw the metadata, split and artefact of every image, without any pixels; rows sorted by lesion and image id.

    ``reversed_set``: every image in the test fold, with the reversed artefacts (see the module's notes); the split
    settings are then unused.
    """
    if not 0 <= spurious_strength <= 1:
        raise ValueError(f"spurious_strength must lie in [0, 1], got {spurious_strength}.")
    if not 0 <= plain_fraction <= 1:
        raise ValueError(f"plain_fraction must lie in [0, 1], got {plain_fraction}.")
    lowest, highest = images_per_lesion
    if not 1 <= lowest <= highest:
        raise ValueError(f"images_per_lesion must be (fewest, most) with 1 <= fewest <= most, got {images_per_lesion}.")
    if n_images > 0 and -(-n_images // highest) > n_images // lowest:
        raise ValueError(f"n_images={n_images} cannot be made of lesions of images_per_lesion={images_per_lesion} images.")
    # a reversed set needs every class once, in its one fold (as split_by_group puts all in training for no fractions)
    fractions = (0.0, 0.0) if reversed_set else (val_fraction, test_fraction)
    lesions_per_class = _lesions_per_class(n_images, images_per_lesion, *fractions)
    n_lesions = int(lesions_per_class.sum())
    rng = np.random.default_rng([seed, 0])

    lesion_dx = rng.permutation(np.repeat(CLASSES, lesions_per_class))
    extra_images = rng.choice(n_lesions * (highest - lowest), n_images - n_lesions * lowest, replace=False)
    images_of_lesion = lowest + np.bincount(extra_images // max(highest - lowest, 1), minlength=n_lesions)
    lesion_numbers = rng.choice(max(10_000, 2 * n_lesions), n_lesions, replace=False)
    image_ranks = rng.permutation(n_images)
    lesion_seeds = rng.integers(2**32, size=n_lesions)
    image_seeds = rng.integers(2**32, size=n_images)
    plain_lesions = np.random.default_rng([seed, 2]).random(n_lesions) < plain_fraction  # a stream of its own

    rows = []
    first_image = np.cumsum(images_of_lesion) - images_of_lesion
    for lesion, (dx, number, start) in enumerate(zip(lesion_dx, lesion_numbers, first_image)):
        patient = _draw_patient(rng, str(dx))
        for index in range(start, start + images_of_lesion[lesion]):
            rank = int(image_ranks[index])
            rows.append(
                dict(
                    lesion_id=f"HAM_{number:07d}",
                    image_id=f"ISIC_{(REVERSED_FIRST_IMAGE_NUMBER if reversed_set else FIRST_IMAGE_NUMBER) + rank:07d}",
                    dx=str(dx),
                    **patient,
                    image_folder=IMAGE_FOLDERS[rank >= (n_images + 1) // 2],
                    plain=bool(plain_lesions[lesion]),
                    lesion_seed=int(lesion_seeds[lesion]),
                    image_seed=int(image_seeds[index]),
                )
            )
    dx_of_rows = [row["dx"] for row in rows]
    if reversed_set:
        folds = [FOLDS[2]] * len(rows)
        correlated, shift = [True] * len(rows), REVERSED_SHIFT
    else:
        folds = split_by_group([row["lesion_id"] for row in rows], dx_of_rows, val_fraction, test_fraction, split_seed)
        correlated, shift = [fold != FOLDS[2] for fold in folds], 0
    artefacts = _assign_artefacts(dx_of_rows, correlated, spurious_strength, np.random.default_rng([seed, 1]), shift)
    images = [SyntheticImage(**row, fold=fold, artefact=a) for row, fold, a in zip(rows, folds, artefacts)]
    return sorted(images, key=lambda image: (image.lesion_id, image.image_id))


def _lesions_per_class(
    n_images: int, images_per_lesion: tuple[int, int], val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Lesions of each class that hold ``n_images`` images and that ``split_by_group`` puts in every split.

    About ``n_images`` over the mean images per lesion, shared by the square root of the real class counts; more
    lesions (of fewer images each) and a per-class floor (1, 2, 4, ... up to an even share) where a split would
    otherwise miss a class. When no validation split can hold every class (it gets a tenth of a few dozen lesions),
    training and test still do.
    """
    lowest, highest = images_per_lesion
    wanted = [fold for fold, fraction in zip(FOLDS, (1, val_fraction, test_fraction)) if fraction > 0]
    typical = max(round(2 * n_images / (lowest + highest)), -(-n_images // highest))
    for required in (wanted, [fold for fold in wanted if fold != "validation"]):
        for n_lesions in range(typical, n_images // lowest + 1):
            even = n_lesions // len(CLASSES)
            for floor in [*(2**k for k in range(even.bit_length()) if 2**k < even), even]:
                counts = _share_lesions(n_lesions, floor)
                if _every_class_in(required, counts, val_fraction, test_fraction):
                    return counts
    evenly_shared = (_share_lesions(n, n // len(CLASSES)) for n in range(len(CLASSES), 2000))
    fewest = next((sum(c) for c in evenly_shared if _every_class_in(required, c, val_fraction, test_fraction)), None)
    raise ValueError(
        f"n_images={n_images} is too small: split_by_group(val_fraction={val_fraction}, test_fraction={test_fraction}) "
        f"would leave a class out of {' or '.join(required)}; use "
        + ("more images." if fewest is None else f"n_images >= {fewest * lowest}.")
    )


def _share_lesions(n_lesions: int, floor: int) -> np.ndarray:
    """Lesions per class: ``floor`` each, the rest shared by the square root of the real counts (largest remainder)."""
    weights = np.sqrt(np.array(list(HAM10000_CLASS_COUNTS.values()), dtype=float))
    rest = n_lesions - floor * len(CLASSES)
    quota = rest * weights / weights.sum()
    counts = np.floor(quota).astype(int)
    counts[np.argsort(counts - quota, kind="stable")[: rest - counts.sum()]] += 1
    return floor + counts


def _every_class_in(
    folds: Sequence[str], lesions_per_class: Sequence[int], val_fraction: float, test_fraction: float
) -> bool:
    """Whether ``split_by_group`` gives every class a lesion in each of ``folds``; its counts depend on sizes only."""
    strata = [dx for dx, n in zip(CLASSES, lesions_per_class) for _ in range(n)]
    assigned = split_by_group(range(len(strata)), strata, val_fraction, test_fraction)
    return set(product(CLASSES, folds)) <= set(zip(strata, assigned))


def _draw_patient(rng: np.random.Generator, dx: str) -> dict:
    """Metadata shared by the images of one lesion: how it was diagnosed, age, sex and body site."""
    dx_types, dx_type_p = DX_TYPES[dx]
    age = float(np.clip(5 * round(rng.normal(MEAN_AGE[dx], 14) / 5), 0, 85))
    sites, site_counts = zip(*LOCALIZATIONS.items())
    return dict(
        dx_type=str(rng.choice(dx_types, p=dx_type_p)),
        age=None if rng.random() < MISSING_AGE_PROBABILITY else age,
        sex=str(rng.choice(SEXES[0], p=SEXES[1])),
        localization=str(rng.choice(sites, p=np.array(site_counts) / sum(site_counts))),
    )


def _assign_artefacts(
    dx: Sequence[str], correlated: Sequence[bool], strength: float, rng: np.random.Generator, shift: int = 0
) -> list[str]:
    """Per image: where ``correlated``, the artefact of the class ``shift`` places after its own in CLASSES (0: its
    own) with probability ``strength``, else another; elsewhere any."""
    class_index = (np.array([CLASSES.index(d) for d in dx], dtype=int) + shift) % len(ARTEFACTS)
    other = (class_index + rng.integers(1, len(ARTEFACTS), size=len(dx))) % len(ARTEFACTS)
    following = np.where(rng.random(len(dx)) < strength, class_index, other)
    independent = rng.integers(len(ARTEFACTS), size=len(dx))
    chosen = np.where(np.array(correlated, dtype=bool), following, independent)
    return [ARTEFACTS[i] for i in chosen]


# ----------------------------------------------------------------------------------------------------------- pixels
# Lengths are in units of half the image's short side, so that a picture looks the same at any size.

SKIN_LIGHT, SKIN_DARK = np.array([238.0, 200.0, 178.0]), np.array([200.0, 150.0, 120.0])
EDGE_PIXELS = 1.2  # the least width of the lesion's soft border (anti-aliasing at small sizes)
EDGE_SOFTNESS = 0.04  # its width at larger sizes, in units of the lesion radius


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates of an image in length units, centred on the image, and the image's half extents."""

    x: np.ndarray
    y: np.ndarray
    unit: float  # pixels per length unit
    half_width: float
    half_height: float

    @classmethod
    def of(cls, width: int, height: int) -> _Grid:
        unit = min(width, height) / 2
        y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        return cls((x - width / 2) / unit, (y - height / 2) / unit, unit, width / 2 / unit, height / 2 / unit)


def render_ham_like(image: SyntheticImage, image_size: tuple[int, int] = (160, 120)) -> tuple[np.ndarray, np.ndarray]:
    """The picture of one planned image as ``(rgb uint8 of shape (H, W, 3), lesion mask bool of shape (H, W))``.

    The lesion's look comes from ``lesion_seed`` alone, so all images of a lesion show the same lesion; the pose,
    skin, artefact and hairs come from ``image_seed``. The artefact is painted only where there is no lesion.
    """
    width, height = _check_image_size(image_size)
    grid = _Grid.of(width, height)
    lesion_rng = np.random.default_rng([image.lesion_seed, 0])
    view_rng = np.random.default_rng([image.image_seed, 0])
    skin_tone = lesion_rng.random()  # the patient's skin, the same in every view
    colour = _paint_skin(view_rng, grid, skin_tone)

    look = "plain" if image.plain else image.dx
    u, v, pixel = _lesion_frame(lesion_rng, view_rng, grid, look)
    lesion_alpha, inside = _lesion_outline(lesion_rng, u, v, pixel, LESION_IRREGULARITY[look])
    lesion_colour, opacity = LESION_PAINTERS[look](lesion_rng, u, v, pixel)
    colour = _over(colour, lesion_colour, lesion_alpha * opacity)

    artefact_rng = np.random.default_rng([image.image_seed, 1])
    artefact_colour, artefact_alpha = _paint_artefact(artefact_rng, grid, image.artefact)
    colour = _over(colour, artefact_colour, artefact_alpha * (1 - lesion_alpha))
    colour = _paint_hairs(np.random.default_rng([image.image_seed, 2]), grid, colour)
    brightness = view_rng.uniform(0.9, 1.08)
    return np.clip(colour * brightness, 0, 255).round().astype(np.uint8), inside


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """Validate ``(width, height)``; below 16 pixels the lesion patterns are not drawable."""
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (width, height) of at least 16 pixels each, got {tuple(image_size)}.")
    return int(image_size[0]), int(image_size[1])


def _over(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Paint ``colour`` (an RGB image or one RGB triple) over ``base`` with per-pixel opacity ``alpha``."""
    return base + (colour - base) * alpha[..., None]


def _fractal_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cells: int, octaves: int = 3) -> np.ndarray:
    """Sum of value noises of doubling frequency and halving amplitude, of about unit spread."""
    return sum(value_noise(rng, x, y, cells * 2**k) * 0.5**k for k in range(octaves)) / 0.8


def _random_walk(rng: np.random.Generator, start: np.ndarray, n_steps: int, step: float, turn: float) -> np.ndarray:
    """Points of a walk from ``start`` whose random heading turns by up to ``turn`` radians a step (hair, vessel)."""
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-turn, turn, n_steps))
    steps = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _paint_skin(rng: np.random.Generator, grid: _Grid, tone: float) -> np.ndarray:
    """Skin of the given tone with blotchy low-frequency colour variation, redness and fine grain."""
    extent = max(grid.half_width, grid.half_height)
    base = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * tone
    shade = 1 + 0.05 * value_noise(rng, grid.x, grid.y, 3, extent)
    redness = 8 * value_noise(rng, grid.x, grid.y, 4, extent)
    colour = base * shade[..., None] + np.stack([redness, -0.4 * redness, -0.4 * redness], axis=-1)
    texture = 4 * value_noise(rng, grid.x, grid.y, 40, extent)[..., None] + rng.normal(0, 2.5, colour.shape)
    return colour + texture


# Per class (and for the plain look of any class): the range of lesion radii (in half-short-side units) and how much
# the border wobbles.
LESION_RADIUS = {
    "nv": (0.48, 0.72), "mel": (0.55, 0.8), "bkl": (0.48, 0.72), "bcc": (0.45, 0.66),
    "akiec": (0.45, 0.66), "vasc": (0.4, 0.56), "df": (0.28, 0.4), "plain": (0.3, 0.75),
}  # fmt: skip
LESION_IRREGULARITY = {
    "nv": 0.03, "mel": 0.22, "bkl": 0.06, "bcc": 0.07, "akiec": 0.11, "vasc": 0.1, "df": 0.04, "plain": 0.08,
}  # fmt: skip


def _lesion_frame(
    lesion_rng: np.random.Generator, view_rng: np.random.Generator, grid: _Grid, look: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Coordinates (u, v) in the lesion's own frame (its outline near radius 1) and the size of a pixel in that frame.

    Position, radius, elongation and orientation belong to the lesion; each view rotates, shifts and scales it a little.
    """
    off_centre = 0.08 if lesion_rng.random() < 0.8 else 0.3  # mostly central, but not always
    centre = np.clip(lesion_rng.normal(0, off_centre, 2), -0.45, 0.45) + view_rng.normal(0, 0.04, 2)
    radius = lesion_rng.uniform(*LESION_RADIUS[look]) * view_rng.uniform(0.9, 1.1)
    aspect = lesion_rng.uniform(0.75, 1.0)
    angle = lesion_rng.uniform(0, 2 * np.pi) + view_rng.uniform(-0.4, 0.4)
    offset_x, offset_y = grid.x - centre[0], grid.y - centre[1]
    u = (np.cos(angle) * offset_x + np.sin(angle) * offset_y) / radius
    v = (-np.sin(angle) * offset_x + np.cos(angle) * offset_y) / (radius * aspect)
    return u, v, 1 / (grid.unit * radius * aspect)


def _lesion_outline(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, pixel: float, irregularity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased opacity of the lesion and its mask (opacity >= 1/2): a radius that wobbles with the angle."""
    orders = np.arange(2, 9, dtype=np.float32)
    amplitudes = (irregularity * rng.standard_normal(len(orders)) / orders**0.7).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, len(orders)).astype(np.float32)
    theta = np.arctan2(v, u)
    border = 1 + (amplitudes[:, None, None] * np.cos(orders[:, None, None] * theta + phases[:, None, None])).sum(0)
    inside_by = np.maximum(border, 0.3) - np.hypot(u, v)  # how far inside the border, in lesion units
    return np.clip(inside_by / max(pixel * EDGE_PIXELS, EDGE_SOFTNESS) + 0.5, 0, 1), inside_by >= 0


def _mix(light: Sequence[float], dark: Sequence[float], t: float | np.ndarray) -> np.ndarray:
    """Colour between ``light`` (t=0) and ``dark`` (t=1); ``t`` a number or a per-pixel array."""
    t = np.asarray(t, dtype=np.float32)[..., None]
    return np.asarray(light, np.float32) * (1 - t) + np.asarray(dark, np.float32) * t


def _dots(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, n: int, reach: float, radius: tuple) -> np.ndarray:
    """Soft-edged opacity of ``n`` round dots with centres within ``reach`` of the origin, radii in ``radius``."""
    centres = rng.uniform(-reach, reach, (n, 2))
    radii = rng.uniform(*radius, n)
    gap = np.hypot(u - centres[:, 0, None, None], v - centres[:, 1, None, None]) - radii[:, None, None]
    return np.clip(0.5 - gap.min(axis=0) / (0.5 * radius[0]), 0, 1)


def _paint_nevus(rng, u, v, pixel):
    """nv: uniform brown, round and regular, with a faint pigment network and a slightly darker centre."""
    brown = _mix((165, 110, 70), (95, 58, 38), rng.random())
    frequency = rng.uniform(14, 18)
    warp = value_noise(rng, u, v, 6)
    network = np.sin(frequency * u + 1.5 * warp) * np.sin(frequency * v - 1.5 * warp)
    shade = (1 - 0.14 * (network > 0.55)) * (0.9 + 0.1 * np.minimum(u * u + v * v, 1))
    return brown * shade[..., None], 1.0


MELANOMA_PALETTE = ((40, 28, 25), (95, 58, 38), (150, 100, 66), (105, 115, 150), (175, 80, 72), (205, 190, 190))


def _paint_melanoma(rng, u, v, pixel):
    """mel: dark, asymmetric blotches of several colours (black, browns, blue-grey, red, white), peripheral globules."""
    palette = np.array(MELANOMA_PALETTE, np.float32)[np.r_[0, 1, rng.choice(np.arange(2, 6), 2, replace=False)]]
    weights = np.exp(5 * np.stack([_fractal_noise(rng, u, v, 4) for _ in palette]))
    colour = np.tensordot(weights / weights.sum(0), palette, axes=(0, 0))
    globules = (value_noise(rng, u, v, 24) > 0.7) & (np.hypot(u, v) > 0.55)
    return colour * (1 - 0.45 * globules[..., None]), 1.0


def _paint_keratosis(rng, u, v, pixel):
    """bkl: light-brown, waxy, 'stuck-on' with dark cerebriform fissures and a few white milia-like cysts."""
    tan = _mix((200, 160, 118), (150, 105, 70), rng.random())
    ridges = np.abs(np.sin(rng.uniform(9, 12) * u + 3 * value_noise(rng, u, v, 5)))
    shade = (1 - 0.3 * (ridges < 0.3)) * (1 + 0.08 * (1 - np.minimum(u * u + v * v, 1)))
    colour = tan * shade[..., None]
    return _over(colour, (238, 228, 195), _dots(rng, u, v, rng.integers(3, 8), 0.65, (0.05, 0.09))), 1.0


def _paint_carcinoma(rng, u, v, pixel):
    """bcc: pink, pearly and translucent, with branching red vessels and blue-grey ovoid nests."""
    pink = _mix((232, 165, 168), (208, 128, 140), rng.random())
    colour = pink + 18 * np.clip(value_noise(rng, u, v, 6), 0, None)[..., None]  # pearly sheen
    vessels = [_random_walk(rng, rng.uniform(-0.6, 0.6, 2), 6, rng.uniform(0.12, 0.18), 0.7) for _ in range(5)]
    distance = np.min([polyline_distance(u, v, walk) for walk in vessels], axis=0)
    colour = _over(colour, (165, 25, 42), np.clip(1.3 - distance / pixel, 0, 1))
    return _over(colour, (95, 100, 132), 0.85 * _dots(rng, u, v, rng.integers(1, 4), 0.5, (0.1, 0.18))), 0.9


def _paint_actinic(rng, u, v, pixel):
    """akiec: red, rough and scaly: white-yellow scale on a grainy erythema, a blurry irregular border."""
    red = _mix((215, 120, 105), (185, 85, 75), rng.random())
    colour = red * (1 + 0.1 * value_noise(rng, u, v, 28))[..., None]
    scale = np.clip((_fractal_noise(rng, u, v, 8, 2) - 0.35) * 3, 0, 0.85)
    return _over(colour, (236, 226, 200), scale), 1.0


def _paint_vascular(rng, u, v, pixel):
    """vasc: red to purple lobules (lacunae) separated by pale septa."""
    n = rng.integers(4, 8)
    centres = rng.uniform(-0.6, 0.6, (n, 2))
    radii = rng.uniform(0.28, 0.45, n)
    depth = np.hypot(u - centres[:, 0, None, None], v - centres[:, 1, None, None]) / radii[:, None, None]
    nearest = depth.argmin(axis=0)
    lobule_colour = _mix((190, 35, 60), (110, 35, 95), rng.random(n))[nearest]
    closest = depth.min(axis=0)
    colour = lobule_colour * (0.82 + 0.18 * np.minimum(closest, 1))[..., None]
    return _over(colour, (205, 125, 138), np.clip((closest - 0.92) / 0.12, 0, 1)), 1.0


def _paint_dermatofibroma(rng, u, v, pixel):
    """df: small, a light-brown delicate network around a white scar-like centre."""
    brown = _mix((170, 120, 85), (125, 82, 58), rng.random())
    colour = brown * (1 - 0.12 * (value_noise(rng, u, v, 14) > 0.4))[..., None]
    scar_edge = rng.uniform(0.4, 0.5) * (1 + 0.25 * value_noise(rng, u, v, 4)) - np.hypot(u, v)
    return _over(colour, (238, 226, 218), np.clip(scar_edge / 0.12 + 0.5, 0, 1)), 1.0


def _paint_plain(rng, u, v, pixel):
    """Any class: a muted mauve-brown, evenly pigmented with soft blotches, a look no class has of its own."""
    mauve = _mix((178, 132, 122), (122, 86, 82), rng.random())
    return mauve * (1 + 0.06 * value_noise(rng, u, v, 5))[..., None], 0.95


LesionPainter = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], tuple[np.ndarray, float]]
LESION_PAINTERS: dict[str, LesionPainter] = {
    "nv": _paint_nevus, "mel": _paint_melanoma, "bkl": _paint_keratosis, "bcc": _paint_carcinoma,
    "akiec": _paint_actinic, "vasc": _paint_vascular, "df": _paint_dermatofibroma, "plain": _paint_plain,
}  # fmt: skip
INK_VIOLET, MARKER_PURPLE, RULER_BLACK, FIELD_BLACK = (70, 50, 150), (115, 55, 140), (28, 28, 30), (10, 8, 8)


def _paint_artefact(rng: np.random.Generator, grid: _Grid, artefact: str) -> tuple[tuple, np.ndarray]:
    """Colour and opacity of one artefact, placed at its edge or corner with a little jitter."""
    kind, place = ARTEFACT_KIND_AND_PLACE[artefact]
    pixel = 1 / grid.unit
    if kind == "vignette":  # the round field of a contact dermoscope leaves the corners dark
        field = rng.uniform(1.05, 1.2)
        return FIELD_BLACK, 0.95 * np.clip((np.hypot(grid.x, grid.y) - field) / 0.15, 0, 1)
    if kind == "ruler":  # a tick every 0.1 units, a long one every fifth, hanging off a line parallel to the edge
        along, depth = (grid.x, grid.half_height - grid.y) if place == "bottom" else (grid.y, grid.x + grid.half_width)
        base = rng.uniform(0.1, 0.16)
        offset = rng.uniform(0, 0.1)
        tick_index = np.round((along - offset) / 0.1)
        tick_length = np.where(tick_index % 5 == 0, 0.14, 0.07)
        line = np.abs(depth - base) < max(pixel, 0.025)  # bold enough to survive a 64 px resize
        on_tick = np.abs(along - offset - 0.1 * tick_index) < max(0.6 * pixel, 0.012)
        ticks = on_tick & (depth > base) & (depth < base + tick_length)
        return RULER_BLACK, 0.85 * ((line | ticks) & (np.abs(along) < 0.85))
    sign_x = -1 if place.endswith("left") else 1
    sign_y = -1 if place.startswith("top") else 1
    x = grid.x - sign_x * (grid.half_width - 0.28)
    y = grid.y - sign_y * (grid.half_height - 0.26)
    if kind == "ink_dots":
        return INK_VIOLET, 0.9 * _dots(rng, x, y, rng.integers(3, 7), 0.16, (0.05, 0.09))
    centre = rng.uniform(-0.05, 0.05, 2)
    ring = max(1.5 * pixel, 0.06) / 2 - np.abs(np.hypot(x - centre[0], y - centre[1]) - rng.uniform(0.13, 0.17))
    return MARKER_PURPLE, 0.9 * np.clip(ring / pixel + 0.5, 0, 1)


def _paint_hairs(rng: np.random.Generator, grid: _Grid, colour: np.ndarray) -> np.ndarray:
    """Dark hair strands across three in ten images, anywhere, the lesion included."""
    if rng.random() >= 0.3:
        return colour
    for _ in range(rng.integers(1, 6)):
        start = rng.uniform(-1, 1, 2) * (grid.half_width, grid.half_height)
        walk = _random_walk(rng, start, 10, 0.2, 0.15)
        width = rng.uniform(0.004, 0.01)  # half the hair's width: under a pixel at 160x120
        alpha = np.clip(1 - (polyline_distance(grid.x, grid.y, walk) - width) * grid.unit, 0, 1)
        colour = _over(colour, _mix((60, 42, 32), (20, 15, 12), rng.random()), 0.9 * alpha)
    return colour


# ------------------------------------------------------------------------------------------------------ writing


def generate_ham_like(
    out_dir: str | Path,
    n_images: int = 700,
    image_size: tuple[int, int] = (160, 120),
    seed: int = 0,
    split_seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    spurious_strength: float = SPURIOUS_STRENGTH,
    images_per_lesion: tuple[int, int] = (1, 3),
    jpeg_quality: int = 90,
    plain_fraction: float = PLAIN_FRACTION,
    reversed_set: bool = False,
) -> Path:
    """Write a synthetic HAM10000 (metadata CSV, JPEG images in two parts, lesion masks) to ``out_dir``; return it.

    ``image_size`` is (width, height), 4:3 like the real 600x450. ``split_seed`` and the fractions must be those the
    data will be split with, since they decide which images carry the class-correlated artefacts. The same arguments
    give byte-identical files; files of the same names already in ``out_dir`` are overwritten. ``reversed_set``: a
    reversed test set (see the module's notes), to write with another ``seed`` than the set the model is trained on.
    """
    _check_image_size(image_size)
    images = plan_ham_like(
        n_images, seed, split_seed, val_fraction, test_fraction, spurious_strength, images_per_lesion, plain_fraction,
        reversed_set,
    )
    return write_ham_like(images, out_dir, image_size, jpeg_quality)


def write_ham_like(
    images: Sequence[SyntheticImage],
    out_dir: str | Path,
    image_size: tuple[int, int] = (160, 120),
    jpeg_quality: int = 90,
) -> Path:
    """Render planned images; write them, their masks and the metadata CSV in the HAM10000 layout; return the root."""
    root = Path(out_dir)
    for folder in (*IMAGE_FOLDERS, MASK_FOLDER):
        (root / folder).mkdir(parents=True, exist_ok=True)
    with open(root / METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, (*METADATA_COLUMNS, ARTEFACT_KEY), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for image in images:
            writer.writerow({**vars(image), "age": "" if image.age is None else f"{image.age:.1f}"})
    for image in images:
        rgb, mask = render_ham_like(image, image_size)
        Image.fromarray(rgb, "RGB").save(root / image.image_folder / f"{image.image_id}.jpg", quality=jpeg_quality)
        mask_path = root / MASK_FOLDER / f"{image.image_id}_segmentation.png"
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(mask_path)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m segx_monai.data.synthetic_derm --out data/ham_synth --n-images 700 --size 160x120``
    (``--reversed --seed 1``: a reversed test set)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (the HAM10000 root)")
    parser.add_argument("--n-images", type=int, default=700)
    parser.add_argument("--size", default="160x120", help="WIDTHxHEIGHT in pixels (default 160x120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="the seed the data will be split with")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    parser.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    parser.add_argument("--spurious-strength", type=float, default=SPURIOUS_STRENGTH)
    parser.add_argument("--images-per-lesion", type=int, nargs=2, default=(1, 3), metavar=("FEWEST", "MOST"))
    parser.add_argument(
        "--plain-fraction", type=float, default=PLAIN_FRACTION, help="share of lesions without their class's look"
    )
    parser.add_argument(
        "--reversed", action="store_true",
        help="a reversed test set: every image a test image, each class showing the next class's artefact (use another --seed)",
    )
    args = parser.parse_args(argv)
    try:
        width, height = (int(side) for side in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WIDTHxHEIGHT, e.g. 160x120, got {args.size!r}")
    try:
        _check_image_size((width, height))
        images = plan_ham_like(
            args.n_images,
            args.seed,
            args.split_seed,
            args.val_fraction,
            args.test_fraction,
            args.spurious_strength,
            tuple(args.images_per_lesion),
            args.plain_fraction,
            args.reversed,
        )
    except ValueError as error:
        parser.error(str(error))
    write_ham_like(images, args.out, (width, height))
    per_class = Counter(image.dx for image in images)
    per_fold = Counter(image.fold for image in images)
    print(
        f"wrote {len(images)} images of {len({image.lesion_id for image in images})} lesions ({width}x{height}) "
        f"to {args.out}: " + ", ".join(f"{dx} {per_class[dx]}" for dx in CLASSES)
        + "; " + "/".join(FOLDS) + " " + "/".join(str(per_fold[fold]) for fold in FOLDS)
    )


if __name__ == "__main__":
    main()
