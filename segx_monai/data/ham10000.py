"""Index HAM10000 (and the ISIC 2018 Task 3 ground truth) in its real file layout into one saved MONAI datalist.

The split is made once, by ``lesion_id`` and stratified by diagnosis, and written to a JSON datalist that every
workflow reads back, so that no image of a test lesion is ever trained on (see the project's METHOD notes, §7).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from PIL import Image

from segx_monai.data.datalist import DatasetError, find_files, write_datalist_once
from segx_monai.data.splits import split_by_group

logger = logging.getLogger(__name__)

HAM_CLASSES = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
METADATA_COLUMNS = ("lesion_id", "image_id", "dx")
ISIC2018_COLUMNS = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_segmentation.png"


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, after checking that its header has the ``required`` columns."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {reader.fieldnames}.")
        return list(reader)


def read_ham_metadata(path: Path) -> list[dict[str, str]]:
    """``HAM10000_metadata.csv`` rows as ``{"image_id", "lesion_id", "dx", "row"}``, with dx checked against the 7 classes."""
    records = []
    for line, row in enumerate(_read_csv(path, METADATA_COLUMNS), start=2):
        dx = row["dx"].strip().lower()
        if dx not in HAM_CLASSES:
            raise DatasetError(f"{path}, line {line} (image_id {row['image_id']!r}): unknown dx {row['dx']!r}; expected one of {list(HAM_CLASSES)}.")
        records.append({"image_id": row["image_id"].strip(), "lesion_id": row["lesion_id"].strip(), "dx": dx, "row": f"{path.name}:{line}"})
    return records


def read_isic2018_ground_truth(path: Path) -> list[dict[str, str]]:
    """ISIC 2018 Task 3 one-hot ground truth (``image,MEL,NV,...``) as records; each row must have exactly one 1."""
    records = []
    for line, row in enumerate(_read_csv(path, ISIC2018_COLUMNS), start=2):
        try:
            hot = [c for c in ISIC2018_COLUMNS[1:] if float(row[c]) == 1.0]
            zeros = [c for c in ISIC2018_COLUMNS[1:] if float(row[c]) == 0.0]
        except ValueError as e:
            raise DatasetError(f"{path}, line {line}: non-numeric one-hot value ({e}).") from e
        if len(hot) != 1 or len(hot) + len(zeros) != len(ISIC2018_COLUMNS) - 1:
            raise DatasetError(f"{path}, line {line} (image {row['image']!r}): expected exactly one class set to 1, got {hot}.")
        records.append({"image_id": row["image"].strip(), "lesion_id": "", "dx": hot[0].lower(), "row": f"{path.name}:{line}"})
    return records


def _check_image(image: Path, mask: Path | None) -> None:
    """Decode the image at 1/8 scale (fast, still fails on truncated JPEGs) and check the mask has its size."""
    try:
        with Image.open(image) as im:
            size = im.size
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Exception as e:  # PIL raises several exception types for unreadable files
        raise DatasetError(f"{image}: not a readable image ({e}).") from e
    if mask is not None:
        try:
            with Image.open(mask) as m:
                mask_size = m.size
        except Exception as e:
            raise DatasetError(f"{mask}: not a readable mask image ({e}).") from e
        if mask_size != size:
            raise DatasetError(f"{mask}: mask is {mask_size[0]}x{mask_size[1]} but its image {image.name} is {size[0]}x{size[1]}; expected equal sizes.")


def index_ham10000(
    dataset_dir: str | Path,
    metadata_csv: str | Path | None = None,
    ground_truth_csv: str | Path | None = None,
    require_masks: bool = False,
    skip_bad: bool = False,
    verify_images: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Records ``{"image", "label", "dx", "lesion_id", "image_id"[, "mask"]}`` (paths relative to ``dataset_dir``) and the skipped rows.

    Labels come from ``HAM10000_metadata.csv`` (found anywhere below ``dataset_dir`` unless given) or, when only
    that is given, from an ISIC 2018 Task 3 one-hot CSV; lesion ids are then taken from the metadata when it is
    present, else each image is its own group (with a warning: images of one lesion may then cross splits).
    Images ``<image_id>.jpg`` and masks ``<image_id>_segmentation.png`` are found in any sub-folder
    (``HAM10000_images_part_1/``, ``_part_2/``, the segmentation release folder). A bad row raises a
    :class:`DatasetError` naming it, unless ``skip_bad``: then it is logged and returned in the skipped list.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset_dir {root} does not exist or is not a folder.")
    metadata = Path(metadata_csv) if metadata_csv else next(iter(find_files(root, ("HAM10000_metadata.csv",), by_name=True).values()), None)
    if ground_truth_csv:
        records = read_isic2018_ground_truth(Path(ground_truth_csv))
        lesions = {r["image_id"]: r["lesion_id"] for r in read_ham_metadata(metadata)} if metadata else {}
        if not lesions:
            logger.warning("No HAM10000_metadata.csv with lesion_id under %s: splitting by image, so one lesion may cross splits.", root)
        for r in records:
            r["lesion_id"] = lesions.get(r["image_id"]) or r["image_id"]
    elif metadata:
        records = read_ham_metadata(metadata)
    else:
        raise DatasetError(f"{root}: no HAM10000_metadata.csv found in it or its sub-folders, and no ground_truth_csv given.")
    if not records:
        raise DatasetError(f"{metadata or ground_truth_csv}: no rows; expected one row per image.")
    images = find_files(root, IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{root}: no images ({'/'.join(IMAGE_SUFFIXES)}) found in it or its sub-folders.")
    masks = {name[: -len(MASK_SUFFIX)]: p for name, p in find_files(root, (MASK_SUFFIX,), by_name=True).items()}

    kept, skipped, seen = [], [], set()
    for r in records:
        try:
            if r["image_id"] in seen:
                raise DatasetError(f"{r['row']}: image_id {r['image_id']!r} is listed twice.")
            seen.add(r["image_id"])
            image = images.get(r["image_id"])
            if image is None:
                raise DatasetError(f"{r['row']}: image {r['image_id']}.jpg not found under {root}.")
            mask = masks.get(r["image_id"])
            if require_masks and mask is None:
                raise DatasetError(f"{r['row']}: lesion mask {r['image_id']}{MASK_SUFFIX} not found under {root}.")
            if verify_images:
                _check_image(image, mask)
        except DatasetError as e:
            if not skip_bad:
                raise
            logger.warning("Skipping %s", e)
            skipped.append({"row": r["row"], "image_id": r["image_id"], "reason": str(e)})
            continue
        item = {"image": str(image.relative_to(root)), "label": HAM_CLASSES.index(r["dx"]), "dx": r["dx"], "lesion_id": r["lesion_id"], "image_id": r["image_id"]}
        if mask is not None:
            item["mask"] = str(mask.relative_to(root))
        kept.append(item)
    if not kept:
        raise DatasetError(f"{root}: every row was skipped; nothing to train on.")
    return kept, skipped


def prepare_ham_datalist(
    dataset_dir: str | Path,
    datalist_file: str | Path,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    **index_kwargs,
) -> Path:
    """Index ``dataset_dir`` and write its lesion-grouped, diagnosis-stratified split to ``datalist_file`` once.

    An existing datalist is kept as it is (the split is never redrawn); delete it to re-index on purpose.
    """
    if Path(datalist_file).exists():
        return Path(datalist_file)
    items, skipped = index_ham10000(dataset_dir, **index_kwargs)
    folds = split_by_group([i["lesion_id"] for i in items], [i["dx"] for i in items], val_fraction, test_fraction, seed)
    return write_datalist_once(
        datalist_file,
        items,
        folds,
        labels=list(HAM_CLASSES),
        meta={"dataset": "HAM10000", "dataset_dir": str(Path(dataset_dir).resolve()), "split_by": "lesion_id", "stratified_by": "dx",
              "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "skipped": skipped},
    )
