"""Write each explained pair's maps (NIfTI and PNG) and an overlay strip a clinician can read at a glance (DICOM results:
``segx_monai.handlers.dicom_results``)."""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine
from monai.transforms import LabelToContour
from PIL import Image, ImageDraw, ImageFont

from segx_monai.explainers import explainer_class
from segx_monai.explainers.base import InputAttributionExplainer
from segx_monai.handlers.contract import SAVED_MAPS, Columns, OutputKeys, map_stem, pair_stem
from segx_monai.handlers.writers import IterationHandler, item_rows
from segx_monai.utils.background import BackgroundWriter
from segx_monai.utils.staging import replace_atomic

_COLORMAP = matplotlib.colormaps["jet"]
PANELS = ("image", "raw", "region", "SegX")  # the overlay strip's panels, left to right, labelled in its top band
# a counterfactual explanation's strip: the image, its counterfactual and their difference (the raw map), region, SegX
COUNTERFACTUAL_PANELS = ("image", "counterfactual", "difference", "region", "SegX")
COUNTERFACTUAL_DIR = "counterfactuals"  # the saved counterfactual images, <pair stem>.png / .nii.gz
DISPLAY_PERCENTILE = 99.0  # top of the overlays' colour scale for attribution maps, whose few extreme pixels fade the rest


def display_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The network input ``(C, H, W)`` un-normalised on a copy into an ``(H, W, 3)`` uint8 picture for display."""
    shape = (-1,) + (1,) * (image.ndim - 1)
    picture = image.detach().float().cpu() * torch.as_tensor(std).view(shape) + torch.as_tensor(mean).view(shape)
    picture = picture.clamp(0, 1).expand(3, *picture.shape[1:]) if picture.shape[0] == 1 else picture.clamp(0, 1)
    return (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def scaled_to_max(heat: np.ndarray) -> np.ndarray:
    """A map >= 0 divided by its maximum, for display (an all-zero map stays zero); unlike min-max, keeps 0 at 0."""
    top = heat.max()
    return heat / top if top > 0 else heat


def display_percentile(explainer: str | None) -> float | None:
    """The percentile of the raw map that tops the overlays' colour scale: ``DISPLAY_PERCENTILE`` for the input
    attribution explainers (speckled maps), None (the maximum) for the others and for an unnamed explainer."""
    return DISPLAY_PERCENTILE if explainer and issubclass(explainer_class(explainer), InputAttributionExplainer) else None


def display_top(raw: np.ndarray, percentile: float | None = None) -> float:
    """Top of the colour scale shared by a pair's raw and SegX panels: the raw map's ``percentile`` (its maximum when
    None or when that percentile is 0), so a SegX map that kept part of the raw mass shows as cooler."""
    top = float(np.percentile(raw, percentile)) if percentile is not None else 0.0
    return top if top > 0 else float(raw.max())


def on_scale(heat: np.ndarray, top: float) -> np.ndarray:
    """``heat / top`` clipped to [0, 1] for display (all zero when ``top`` is 0); the saved maps are not clipped."""
    return np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)


def heat_overlay(picture: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``heat`` in [0, 1] colour-mapped and blended onto the picture, more opaque where the map is higher."""
    coloured = _COLORMAP(heat)[..., :3] * 255
    weight = alpha * np.sqrt(heat)[..., None]
    return (picture * (1 - weight) + coloured * weight).round().astype(np.uint8)


def overlay_strip(
    picture: np.ndarray, raw: np.ndarray, region: np.ndarray, segx_map: np.ndarray, segx_binary: np.ndarray,
    percentile: float | None = None, counterfactual: np.ndarray | None = None,
) -> np.ndarray:
    """image | raw map | predicted region (contour-free tint) | SegX map (``PANELS``), side by side; raw and SegX on
    one colour scale (see ``display_top``); the SegX panel outlines in white the binary map, the set the SegX variant
    declares most relevant (MONAI's ``LabelToContour``). A ``counterfactual`` picture goes after the image, the raw
    map being their difference (``COUNTERFACTUAL_PANELS``)."""
    tint = picture.copy()
    tint[region > 0] = (0.5 * tint[region > 0] + 0.5 * np.array([0, 200, 0])).astype(np.uint8)
    top = display_top(raw, percentile)
    segx_panel = heat_overlay(picture, on_scale(segx_map, top))
    segx_panel[LabelToContour()(torch.as_tensor(segx_binary[None], dtype=torch.float32))[0].numpy() > 0] = 255
    before = [picture] if counterfactual is None else [picture, counterfactual]
    return np.concatenate([*before, heat_overlay(picture, on_scale(raw, top)), tint, segx_panel], axis=1)


def labelled(strip: np.ndarray, labels: Sequence[str] = PANELS) -> np.ndarray:
    """The strip below a white band naming its equal-width panels, so a saved overlay reads without its caption."""
    width = strip.shape[1] // len(labels)
    font = ImageFont.load_default(size=max(8, min(18, width // 8)))
    band = Image.new("RGB", (strip.shape[1], font.size + 8), "white")
    draw = ImageDraw.Draw(band)
    for n, label in enumerate(labels):
        draw.text((n * width + 4, 4), label, fill="black", font=font)
    return np.concatenate([np.asarray(band), strip], axis=0)


def save_png(picture: np.ndarray, path: Path) -> None:
    """``picture`` (uint8) as a PNG file, written beside ``path`` and renamed into place."""
    replace_atomic(path, lambda partial: Image.fromarray(picture).save(partial, format="PNG"))


def save_nifti(volume: np.ndarray, path: Path) -> None:
    """``volume`` as a float32 ``.nii.gz`` file (identity affine; gzip level 1 as nibabel's, no time stamp), written
    beside ``path`` and renamed into place."""
    data = nib.Nifti1Image(volume.astype(np.float32), np.eye(4)).to_bytes()
    replace_atomic(path, lambda partial: partial.write_bytes(gzip.compress(data, compresslevel=1, mtime=0)))


class SavedPair(NamedTuple):
    """What :class:`ExplanationSaver` writes for one explained (image, finding) pair, copied out of the engine."""

    image_id: str
    finding: str | None
    picture: np.ndarray  # (H, W, 3) uint8, as the classifier saw it
    maps: dict[str, np.ndarray]  # SAVED_MAPS' kinds -> (H, W)
    region: np.ndarray  # (H, W) predicted region
    counterfactual: np.ndarray | None  # (H, W, 3) uint8


class ExplanationSaver(IterationHandler):
    """Saves each pair's ``SAVED_MAPS`` as ``maps/<id>[_<finding>]_raw`` / ``_segx`` / ``_segx_binary`` (``.nii.gz``
    float, ``.png`` 8-bit; the binary map 0/1 and 0/255) and its overlay strip as ``overlays/<id>[_<finding>].png``;
    a pair with a counterfactual image also has it saved, as the picture shown (``counterfactuals/<id>[_<finding>]``,
    ``.nii.gz`` in [0, 1] channel-last, ``.png``), and shown in the strip (``COUNTERFACTUAL_PANELS``). Each file is
    written beside its name and renamed into place.

    ``mean``/``std`` are those of the images' normalisation, to show the picture the classifier saw. Maps are written
    at the network's grid; ``display_size`` enlarges the overlays so that each panel is at least that wide (nearest
    neighbour, no smoothing). ``explainer`` (its registered name) sets the overlays' colour scale, see
    ``display_percentile``: display only, the saved maps keep their values.

    Attached to an engine with ``background`` (the default), the iteration only copies the arrays out and a
    :class:`BackgroundWriter` draws and writes the files while the next batch is explained; the engine waits for them
    when it completes or fails, and a failed write fails the run. Called directly, it writes before returning.
    """

    def __init__(
        self, output_dir: str | Path, mean: Sequence[float], std: Sequence[float], formats: Sequence[str] = ("nii.gz", "png"),
        overlays: bool = True, display_size: int = 224, id_key: str = Columns.IMAGE_ID, image_key: str = OutputKeys.IMAGE,
        explainer: str | None = None, background: bool = True,
    ) -> None:
        self.output_dir, self.mean, self.std, self.formats = Path(output_dir), mean, std, tuple(formats)
        self.percentile = display_percentile(explainer)
        self.overlays, self.display_size, self.id_key, self.image_key = overlays, display_size, id_key, image_key
        unknown = set(self.formats) - {"nii.gz", "png"}
        if unknown:
            raise ValueError(f"unknown map formats {sorted(unknown)}; expected 'nii.gz' and/or 'png'.")
        self.requires = (image_key, *SAVED_MAPS.values(), OutputKeys.REGION_MASK)
        self.background, self.writer = background, None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self.background:
            self.writer = BackgroundWriter(max_pending=2, name=f"explanation writer ({self.output_dir})")
            self.writer.attach(engine)

    def _write_map(self, heat: np.ndarray, stem: str) -> None:
        if "nii.gz" in self.formats:
            save_nifti(heat, self.output_dir / "maps" / f"{stem}.nii.gz")
        if "png" in self.formats:
            save_png((scaled_to_max(heat) * 255).round().astype(np.uint8), self.output_dir / "maps" / f"{stem}.png")

    def _write_counterfactual(self, picture: np.ndarray, stem: str) -> None:
        folder = self.output_dir / COUNTERFACTUAL_DIR
        folder.mkdir(parents=True, exist_ok=True)
        if "nii.gz" in self.formats:
            save_nifti(picture.astype(np.float32) / 255, folder / f"{stem}.nii.gz")
        if "png" in self.formats:
            save_png(picture, folder / f"{stem}.png")

    def _pairs(self, engine: Engine) -> list[SavedPair]:
        """Copies of what the iteration's pairs need written."""
        pairs = []
        for batch_item, item in self.items(engine):
            picture, counterfactual = display_image(item[self.image_key], self.mean, self.std), item.get(OutputKeys.COUNTERFACTUAL)
            for n, row in enumerate(item_rows(item)[: item[OutputKeys.MAP].shape[0]]):
                pairs.append(SavedPair(
                    batch_item[self.id_key], row.get(Columns.FINDING), picture,
                    {kind: item[key][n, 0].float().cpu().numpy().copy() for kind, key in SAVED_MAPS.items()},
                    item[OutputKeys.REGION_MASK][n, 0].cpu().numpy().copy(),
                    None if counterfactual is None else display_image(counterfactual[n], self.mean, self.std),
                ))
        return pairs

    def _write_pairs(self, pairs: list[SavedPair]) -> None:
        (self.output_dir / "maps").mkdir(parents=True, exist_ok=True)
        (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            for kind, heat in pair.maps.items():
                self._write_map(heat, map_stem(pair.image_id, pair.finding, kind))
            stem = pair_stem(pair.image_id, pair.finding)
            if pair.counterfactual is not None:
                self._write_counterfactual(pair.counterfactual, stem)
            if self.overlays:
                maps, picture = pair.maps, pair.picture
                strip = overlay_strip(picture, maps["raw"], pair.region, maps["segx"], maps["segx_binary"], self.percentile, pair.counterfactual)
                scale = max(1, math.ceil(self.display_size / picture.shape[1]))
                strip = np.asarray(Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST))
                panels = PANELS if pair.counterfactual is None else COUNTERFACTUAL_PANELS
                save_png(labelled(strip, panels), self.output_dir / "overlays" / f"{stem}.png")

    def __call__(self, engine: Engine) -> None:
        pairs = self._pairs(engine)
        if self.writer is None:
            self._write_pairs(pairs)
        else:
            self.writer.submit(self._write_pairs, pairs)
