"""Index ChestX-Det10 and ChestX-Det (NIH chest X-rays with finding boxes, and polygons) into one saved MONAI datalist.

The release's own train/test split is kept and validation is carved from train once, by seed, and saved with the
datalist, so that every workflow reads the same folds (see the project's METHOD notes, §7). Finding masks are not
written as files: :class:`FindingMasksd` draws them at load time from the annotation kept in each datalist item.

Coordinate convention of the annotations: a box ``[x1, y1, x2, y2]`` and a polygon point ``[x, y]`` are pixel
indices of the image as released (1024x1024 for the real data), x the column and y the row, both ends included
(a ChestX-Det box spans the extreme points of its polygon). Masks are arrays in numpy order, (rows, columns).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.transforms import MapTransform
from PIL import Image, ImageDraw

from segx_monai.data.datalist import ARTEFACT_KEY, DatasetError, find_files, walk_files, write_datalist_once
from segx_monai.data.fingerprint import attach_masks, check_saved_split, make_fingerprint
from segx_monai.data.readers import original_size
from segx_monai.data.splits import SPLIT_SEED, VAL_FRACTION, split_by_group
from segx_monai.io.dicom import DICOM_SUFFIXES, is_dicom

logger = logging.getLogger(__name__)

CHESTX_DET10_FINDINGS = (
    "Atelectasis", "Calcification", "Consolidation", "Effusion", "Emphysema",
    "Fibrosis", "Fracture", "Mass", "Nodule", "Pneumothorax",
)  # fmt: skip
# The 13 findings of ChestX-Det in the order of its release notes (alphabetical, like ChestX-Det10's ten).
CHESTX_DET_FINDINGS = (
    "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion", "Emphysema",
    "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax",
)  # fmt: skip
ANNOTATION_FILES = {"train": "train.json", "test": "test.json"}  # ChestX-Det10; ChestX-Det's are ChestX_Det_<fold>.json
LUNG_MASK_FOLDER = "masks"
NO_FINDING = "No Finding"
INDEXER_VERSION = 1  # raise when indexing or splitting changes so that the same data would give another split


def _load_entries(path: Path) -> list:
    """The top-level JSON list of an annotation file."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e}).") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); expected a list of {{file_name, syms, boxes}}.") from e
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: the top level is a JSON {type(entries).__name__}; expected a list of entries.")
    return entries


def _where(path: Path, index: int, file_name) -> str:
    """How an error names an annotation entry."""
    return f"{path}, entry {index} (file_name {file_name!r})"


def _is_number(value) -> bool:
    """An int or float JSON value (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_entry(where: str, entry, findings: Sequence[str]) -> dict:
    """One annotation entry as ``{"file_name", "syms", "boxes"[, "polygons"][, "artefact"]}`` after checking its fields
    and names; ``artefact`` (beyond the real fields) lists the image's acquisition artefacts."""
    syms, boxes = entry.get("syms"), entry.get("boxes", [])
    if not isinstance(syms, list) or not all(isinstance(s, str) for s in syms):
        raise DatasetError(f"{where}: 'syms' is {syms!r}; expected a list of finding names, empty for no finding.")
    unknown = sorted(set(syms) - set(findings))
    if unknown:
        raise DatasetError(f"{where}: unknown finding(s) {unknown}; expected names from {list(findings)}.")
    if not isinstance(boxes, list) or len(boxes) != len(syms):
        raise DatasetError(f"{where}: {len(syms)} syms, boxes {str(boxes)[:80]}; expected one [x1, y1, x2, y2] per sym.")
    for box in boxes:
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            raise DatasetError(f"{where}: box {box!r}; expected four numbers [x1, y1, x2, y2].")
        if box[2] < box[0] or box[3] < box[1]:
            raise DatasetError(f"{where}: box {box!r} has x2 < x1 or y2 < y1; expected [left, top, right, bottom].")
        if min(box) < 0:
            raise DatasetError(f"{where}: box {box!r} has a negative coordinate; expected pixel indices of the image, from 0.")
    checked = {"file_name": entry["file_name"], "syms": syms, "boxes": boxes}
    if "polygons" in entry:
        polygons = entry["polygons"]
        if not isinstance(polygons, list) or len(polygons) != len(syms):
            raise DatasetError(f"{where}: {len(syms)} syms, polygons {str(polygons)[:80]}; expected one polygon per sym.")
        for polygon in polygons:
            points_ok = isinstance(polygon, list) and all(
                isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in polygon
            )
            if not points_ok:
                raise DatasetError(f"{where}: polygon {str(polygon)[:80]}; expected a list of [x, y] number pairs.")
            if any(min(point) < 0 for point in polygon):
                raise DatasetError(f"{where}: polygon {str(polygon)[:80]} has a negative coordinate; expected pixel indices of the image, from 0.")
        checked["polygons"] = polygons
    if ARTEFACT_KEY in entry:
        artefacts = entry[ARTEFACT_KEY]
        if not isinstance(artefacts, list) or not all(isinstance(a, str) for a in artefacts):
            raise DatasetError(f"{where}: {ARTEFACT_KEY!r} is {artefacts!r}; expected a list of artefact names, empty for none.")
        checked[ARTEFACT_KEY] = artefacts
    return checked


def read_chestx_det_json(path: str | Path, findings: Sequence[str] = CHESTX_DET10_FINDINGS) -> list[dict]:
    """The entries ``{"file_name", "syms", "boxes"[, "polygons"]}`` of a ChestX-Det10 or ChestX-Det file, checked.

    Empty ``syms`` means no finding. Every entry needs ``file_name`` and ``syms`` (boxes may be left out only when
    syms is empty), one box and, when given, one polygon per sym, numeric coordinates and names from ``findings``
    (pass :data:`CHESTX_DET_FINDINGS` for ChestX-Det); a file name listed twice is an error.
    """
    path = Path(path)
    entries, first_index = [], {}
    for index, entry in enumerate(_load_entries(path)):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        where = _where(path, index, name)
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: no 'file_name'; expected an object with 'file_name' ('36199.png') and 'syms'.")
        if name in first_index:
            raise DatasetError(f"{where}: file_name listed twice (first at entry {first_index[name]}); expected it once.")
        first_index[name] = index
        entries.append(_check_entry(where, entry, findings))
    return entries


def multi_hot(syms: Sequence[str], findings: Sequence[str] = CHESTX_DET10_FINDINGS) -> np.ndarray:
    """``(K,)`` float32 labels: 1 for each of ``findings`` named in ``syms`` (any number of instances), else 0."""
    return np.isin(np.asarray(findings), np.asarray(syms, dtype=str)).astype(np.float32)


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """``(rows, cols)`` uint8 mask of the pixels ``x1 <= column <= x2`` and ``y1 <= row <= y2``."""
    x1, y1, x2, y2 = box
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((x1 <= cols) & (cols <= x2) & (y1 <= rows) & (rows <= y2)).astype(np.uint8)


def polygon_mask(points: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """``(rows, cols)`` uint8 mask of a polygon of ``[x, y]`` points, filled with its outline included (PIL's rule)."""
    canvas = Image.new("L", (shape[1], shape[0]))
    xy = [(float(x), float(y)) for x, y in points]
    draw = ImageDraw.Draw(canvas)
    if len(xy) > 1:
        draw.polygon(xy, fill=1, outline=1)
    elif xy:
        draw.point(xy, fill=1)  # PIL draws no polygon of a single point
    return np.asarray(canvas, dtype=np.uint8)


def finding_masks(
    entry: Mapping, shape: tuple[int, int], findings: Sequence[str] = CHESTX_DET10_FINDINGS
) -> np.ndarray:
    """``(K, rows, cols)`` uint8 masks, one per finding: the union of its instances' polygons, or of their boxes.

    ``entry`` has ``syms`` (or ``findings``, the datalist's name for them), ``boxes`` and optionally ``polygons``;
    an instance with an empty polygon falls back to its box.
    """
    syms = entry["syms"] if "syms" in entry else entry["findings"]
    index = {name: k for k, name in enumerate(findings)}
    unknown = sorted(set(syms) - set(index))
    if unknown:
        name = entry.get("file_name") or entry.get("image_id")
        raise ValueError(f"finding(s) {unknown} of {name!r} are not among {list(findings)}.")
    masks = np.zeros((len(findings), *shape), np.uint8)
    polygons = entry.get("polygons") or [[]] * len(syms)
    for sym, box, polygon in zip(syms, entry["boxes"], polygons):
        masks[index[sym]] |= polygon_mask(polygon, shape) if polygon else box_mask(box, shape)
    return masks


class FindingMasksd(MapTransform):
    """Add ``(K, rows, cols)`` uint8 finding masks to a ChestX-Det datalist item, drawn at the size of its image.

    ``keys`` names the loaded image (2D, or channel-first 3D) whose size in its file the masks take; apply this before any
    spatial transform (the annotation is in pixels of the image as released), then apply those to both keys.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        findings: Sequence[str] = CHESTX_DET10_FINDINGS,
        name: str = "finding_masks",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"FindingMasksd takes the one image key the masks are sized by, got {list(self.keys)}.")
        self.findings, self.name = tuple(findings), name

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            applied = [operation["class"] for operation in getattr(image, "applied_operations", [])]
            if applied:
                raise ValueError(
                    f"{key!r} of {d.get('image_id')!r} went through {applied}; apply FindingMasksd before spatial "
                    "transforms (resizing, cropping), since boxes and polygons are in pixels of the image as loaded."
                )
            shape = tuple(original_size(image).tolist())  # the file's size, also when it was decoded reduced
            d[self.name] = finding_masks(d, shape, self.findings)
        return d


# --------------------------------------------------------------------------------------------------- indexing


def _image_size(path: Path) -> tuple[int, int]:
    """``(rows, cols)`` of a PNG or DICOM image from its header, without decoding the pixels."""
    try:
        if is_dicom(path):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            return int(header.Rows), int(header.Columns)
        with Image.open(path) as image:
            return image.height, image.width
    except Exception as e:  # PIL and pydicom raise several exception types for unreadable files
        raise DatasetError(f"{path}: not a readable PNG or DICOM image ({e}).") from e


def _files_by_name(root: Path, excluded: Path | None) -> dict[str, list[Path]]:
    """Every file below ``root`` (symlinked folders included) by lower-cased file name, skipping ``excluded`` (lung
    masks share the images' names).

    Several paths per name are kept, and an error only for names actually looked up (see :func:`_find_image`).
    """
    found: dict[str, list[Path]] = defaultdict(list)
    for path in walk_files(root, excluded):
        found[path.name.lower()].append(path)
    return found


def _find_image(file_name: str, files: dict[str, list[Path]], where: str, root: Path) -> Path:
    """The image of ``file_name``: that PNG, else a DICOM of its stem (``.dcm``, ``.dicom`` or no extension)."""
    stem = Path(file_name).stem
    for candidate in (file_name, *(stem + s for s in DICOM_SUFFIXES), stem):
        paths = [p for p in files.get(candidate.lower(), []) if candidate != stem or is_dicom(p)]
        if len(paths) > 1:
            raise DatasetError(f"{where}: image found twice, {paths[0]} and {paths[1]}; expected it once below {root}.")
        if paths:
            return paths[0]
    raise DatasetError(f"{where}: image {file_name} (or DICOM {stem}.dcm / {stem}) not found under {root}.")


def _index_entries(
    entries: Sequence[dict],
    json_path: Path,
    files: dict[str, list[Path]],
    masks: dict[str, Path],
    root: Path,
    findings: Sequence[str],
    skip_bad: bool,
) -> tuple[list[dict], list[dict]]:
    """Datalist items of one annotation file (paths relative to ``root`` where below it) and the skipped entries."""
    items, skipped = [], []
    for index, entry in enumerate(entries):
        where = _where(json_path, index, entry["file_name"])
        image_id = Path(entry["file_name"]).stem
        mask = masks.get(image_id)
        try:
            image = _find_image(entry["file_name"], files, where, root)
            _check_sizes(where, entry, image, mask)
        except DatasetError as e:
            if not skip_bad:
                raise
            logger.warning("Skipping %s", e)
            skipped.append({"json": json_path.name, "file_name": entry["file_name"], "reason": str(e)})
            continue
        item = {
            "image": _relative(image, root),
            "image_id": image_id,
            "label": multi_hot(entry["syms"], findings).tolist(),
            "findings": entry["syms"],
            "boxes": entry["boxes"],
        }
        for key in ("polygons", ARTEFACT_KEY):
            if key in entry:
                item[key] = entry[key]
        if mask is not None:
            item["lung_mask"] = _relative(mask, root)
        items.append(item)
    return items, skipped


def _check_sizes(where: str, entry: dict, image: Path, mask: Path | None) -> None:
    """Check that the annotation lies within the image (not a resized copy) and that the lung mask has its size."""
    rows, cols = _image_size(image)
    corners = [box[:2] for box in entry["boxes"]] + [box[2:] for box in entry["boxes"]]
    points = corners + [point for polygon in entry.get("polygons", []) for point in polygon]
    if points and (np.max(points, axis=0) > (cols, rows)).any():
        x, y = np.max(points, axis=0).tolist()
        raise DatasetError(
            f"{where}: annotation reaches (x, y) = ({x:g}, {y:g}) but {image.name} is {cols}x{rows}; expected "
            "coordinates in pixels of this image (for the real release, of the original 1024x1024 PNG)."
        )
    if mask is not None:
        mask_rows, mask_cols = _image_size(mask)
        if (mask_rows, mask_cols) != (rows, cols):
            raise DatasetError(
                f"{mask}: lung mask is {mask_cols}x{mask_rows} but its image {image.name} is {cols}x{rows}; "
                "expected equal sizes."
            )


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when below it (``load_fold`` joins it back), else absolute."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path.resolve())


def _annotation_file(root: Path, fold: str, given: str | Path | None, missing_ok: bool = False) -> Path | None:
    """The given annotation file, or the one ``train.json`` / ``test.json`` below ``root`` (None if ``missing_ok``)."""
    if given is not None:
        if not Path(given).is_file():
            raise DatasetError(f"{fold} annotation file {given} does not exist.")
        return Path(given)
    name = ANNOTATION_FILES[fold]
    found = find_files(root, (name,), by_name=True).get(name)
    if found is None and not missing_ok:
        raise DatasetError(
            f"{root}: no {name} found in it or its sub-folders; expected the ChestX-Det10 layout (train.json, "
            f"test.json, train_data/, test_data/), or pass {fold}_json= (for ChestX-Det: ChestX_Det_{fold}.json, "
            "with findings=CHESTX_DET_FINDINGS)."
        )
    return found


def prepare_chestx_datalist(
    dataset_dir: str | Path,
    datalist_file: str | Path,
    seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    train_json: str | Path | None = None,
    test_json: str | Path | None = None,
    lung_mask_dir: str | Path | None = None,
    skip_bad: bool = False,
    findings: Sequence[str] = CHESTX_DET10_FINDINGS,
    test_only: bool = False,
) -> Path:
    """Index a ChestX-Det10 (or ChestX-Det) folder and write its split to ``datalist_file`` once; return the file.
    ``test_only``: every image listed in ``train.json`` or ``test.json``, whichever exist, in the test fold instead
    (an external test set, e.g. a folder with ``test.json`` and ``test_data/`` only; ``seed``, ``val_fraction`` unused).

    Items are ``{"image", "image_id", "label" (K floats), "findings", "boxes"[, "polygons"][, "lung_mask"]}``.
    Images are found by file name anywhere below ``dataset_dir`` (``train_data/``, ``test_data/``, any folder), a PNG
    ``36199.png`` also as the DICOM ``36199.dcm`` or extension-less ``36199``; lung masks (both lungs, 0/255, optional
    per image) as ``<lung_mask_dir>/<image id>.png``, by default ``<dataset_dir>/masks``. The release's test set is
    the test fold; validation is drawn from train with ``seed``, one image per group (the release renamed the images,
    so patients are unknown), stratified by the first finding in ``findings`` order or no finding. A bad entry raises
    a :class:`DatasetError` naming it, unless ``skip_bad``: then it is logged and recorded in the datalist's meta.
    An existing datalist is never redrawn: it is used only while its fingerprint (settings, annotation files, image
    list) matches the data and settings now, else a :class:`~segx_monai.data.fingerprint.StaleSplitError` says what
    changed; lung masks are refreshed in it (added or removed) without moving any image between folds.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"{'test_' if test_only else ''}dataset_dir {root} does not exist or is not a folder.")
    given = {"train": train_json, "test": test_json}
    found = {fold: _annotation_file(root, fold, given[fold], missing_ok=test_only) for fold in ANNOTATION_FILES}
    annotation_files = {fold: path for fold, path in found.items() if path is not None}
    if not annotation_files:
        raise DatasetError(f"test_dataset_dir {root}: neither {' nor '.join(ANNOTATION_FILES.values())} found in it or its sub-folders; expected the ChestX-Det10 layout.")
    mask_dir = Path(lung_mask_dir) if lung_mask_dir is not None else root / LUNG_MASK_FOLDER
    if lung_mask_dir is not None and not mask_dir.is_dir():
        raise DatasetError(f"lung_mask_dir {mask_dir} does not exist or is not a folder.")
    masks = find_files(mask_dir, (".png",)) if mask_dir.is_dir() else {}
    files = _files_by_name(root, mask_dir.resolve() if mask_dir.is_dir() else None)
    images = [_relative(p, root) for paths in files.values() for p in paths if p.suffix.lower() == ".png" or is_dicom(p)]
    split_settings = {"test_only": True} if test_only else {"split_seed": seed, "val_fraction": val_fraction}
    settings = {"indexer": f"chestx_det/{INDEXER_VERSION}", **split_settings, "findings": list(findings)}
    current = make_fingerprint(root, settings, list(annotation_files.values()), images)
    if Path(datalist_file).exists():
        check_saved_split(datalist_file, current, root)
        relative_masks = {image_id: _relative(path, root) for image_id, path in masks.items()}
        attach_masks(datalist_file, relative_masks, "lung_mask",
                     check=lambda item, mask: _check_sizes(f"{mask} (new lung mask)", {"boxes": []}, root / item["image"], root / mask))
        return Path(datalist_file)

    entries = {fold: read_chestx_det_json(path, findings) for fold, path in annotation_files.items()}
    leaked = sorted({e["file_name"] for e in entries.get("train", [])} & {e["file_name"] for e in entries.get("test", [])})
    if leaked:
        raise DatasetError(
            f"{annotation_files['train']} and {annotation_files['test']} both list {leaked[:5]}; "
            "expected disjoint train and test images."
        )

    items, skipped = {}, []
    for fold, path in annotation_files.items():
        items[fold], fold_skipped = _index_entries(entries[fold], path, files, masks, root, findings, skip_bad)
        skipped += fold_skipped
        if not items[fold]:
            raise DatasetError(f"{path}: no entries left (empty file, or every entry skipped); expected images.")
    if test_only:
        all_items = [item for fold_items in items.values() for item in fold_items]
        folds = ["test"] * len(all_items)
        split = {"test": "every image (an external test set)"}
    else:
        strata = [next((f for f in findings if f in i["findings"]), NO_FINDING) for i in items["train"]]
        train_folds = split_by_group([i["image_id"] for i in items["train"]], strata, val_fraction, 0.0, seed)
        all_items, folds = items["train"] + items["test"], train_folds + ["test"] * len(items["test"])
        split = {"test": "the release's own test set", "split_by": "image", "stratified_by": "first finding, or no finding",
                 "seed": seed, "val_fraction": val_fraction}
    has_polygons = any("polygons" in e for fold_entries in entries.values() for e in fold_entries)
    path = write_datalist_once(
        datalist_file,
        all_items,
        folds,
        labels=list(findings),
        meta={
            "dataset": "ChestX-Det" if has_polygons else "ChestX-Det10",
            "dataset_dir": str(root.resolve()),
            "annotation_files": {fold: str(path.resolve()) for fold, path in annotation_files.items()},
            "lung_mask_dir": str(mask_dir.resolve()) if masks else None,
            **split,
            "skipped": skipped,
            "fingerprint": current,
        },
    )
    check_saved_split(path, current, root)  # another process may have written its split first
    return path
