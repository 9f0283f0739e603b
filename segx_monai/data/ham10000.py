"""Index HAM10000 (and the ISIC 2018 Task 3 ground truth) in its real file layout into one saved MONAI datalist.

The split is made once, by ``lesion_id`` and stratified by diagnosis, and written to a JSON datalist that every
workflow reads back, so that no image of a test lesion is ever trained on (see the project's METHOD notes, §7).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from PIL import Image

from segx_monai.data.datalist import ARTEFACT_KEY, DatasetError, find_files, write_datalist_once
from segx_monai.data.fingerprint import attach_masks, check_saved_split, make_fingerprint
from segx_monai.data.splits import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, split_by_group

logger = logging.getLogger(__name__)

HAM_CLASSES = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
METADATA_COLUMNS = ("lesion_id", "image_id", "dx")
ISIC2018_COLUMNS = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_segmentation.png"
INDEXER_VERSION = 1  # raise when indexing or splitting changes so that the same data would give another split


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV file as dicts, after checking that its header has the ``required`` columns.

    Another encoding is an error naming the line and byte, not a guess: ids must match file names exactly, and any
    byte string decodes as Latin-1, so a fallback would also hide a damaged file.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8 ({e.reason}); expected a UTF-8 file "
            f"(convert it, e.g. iconv -f latin1 -t utf-8 {Path(path).name})."
        ) from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; expected at least {list(required)}, found {reader.fieldnames}.")
    return list(reader)


def _lines(rows: list[str], limit: int = 10) -> str:
    """Row references ``file:line`` as "lines 2, 5, 9" (the first ``limit``)."""
    numbers = [r.rsplit(":", 1)[1] for r in rows]
    return f"line{'s' if len(numbers) > 1 else ''} {', '.join(numbers[:limit])}{f' ... ({len(numbers)} rows)' if len(numbers) > limit else ''}"


def read_ham_metadata(path: Path) -> list[dict[str, str]]:
    """``HAM10000_metadata.csv`` rows as ``{"image_id", "lesion_id", "dx", "row"}``, with dx checked against the 7
    classes and every lesion_id present (it groups the split); with an ``artefact`` column (the image's acquisition
    artefacts, ';' between several), its value too. Other columns beyond the real ones are ignored."""
    records = []
    for line, row in enumerate(_read_csv(path, METADATA_COLUMNS), start=2):
        dx = row["dx"].strip().lower()
        if dx not in HAM_CLASSES:
            raise DatasetError(f"{path}, line {line} (image_id {row['image_id']!r}): unknown dx {row['dx']!r}; expected one of {list(HAM_CLASSES)}.")
        records.append({"image_id": row["image_id"].strip(), "lesion_id": row["lesion_id"].strip(), "dx": dx, "row": f"{path.name}:{line}"})
        if ARTEFACT_KEY in row:
            records[-1][ARTEFACT_KEY] = (row[ARTEFACT_KEY] or "").strip()
    empty = [r["row"] for r in records if not r["lesion_id"]]
    if empty:
        raise DatasetError(f"{path}, {_lines(empty)}: empty lesion_id; expected the lesion of every image (the split keeps a lesion's images together).")
    return records


def _check_one_diagnosis(records: list[dict[str, str]]) -> None:
    """Refuse a lesion_id whose images have different diagnoses, naming the rows of each: it cannot be stratified."""
    by_lesion: dict[str, dict[str, list[str]]] = {}
    for r in records:
        by_lesion.setdefault(r["lesion_id"], {}).setdefault(r["dx"], []).append(r["row"])
    for lesion, rows in by_lesion.items():
        if len(rows) > 1:
            files = sorted({row.rsplit(":", 1)[0] for dx_rows in rows.values() for row in dx_rows})
            found = "; ".join(f"{dx} at {_lines(dx_rows)}" for dx, dx_rows in rows.items())
            raise DatasetError(f"{', '.join(files)}: lesion_id {lesion!r} has {len(rows)} diagnoses ({found}); expected one diagnosis per lesion.")


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


def _metadata_file(root: Path, metadata_csv: str | Path | None) -> Path | None:
    """The given metadata CSV, else the one ``HAM10000_metadata.csv`` below ``root`` (or None)."""
    return Path(metadata_csv) if metadata_csv else next(iter(find_files(root, ("HAM10000_metadata.csv",), by_name=True).values()), None)


def _masks_by_id(root: Path) -> dict[str, Path]:
    """Lesion masks ``<image_id>_segmentation.png`` below ``root`` by image id."""
    return {name[: -len(MASK_SUFFIX)]: p for name, p in find_files(root, (MASK_SUFFIX,), by_name=True).items()}


def ham_fingerprint(
    dataset_dir: str | Path, seed: int, val_fraction: float, test_fraction: float,
    metadata_csv: str | Path | None = None, ground_truth_csv: str | Path | None = None, test_only: bool = False,
) -> dict:
    """The fingerprint (:func:`~segx_monai.data.fingerprint.make_fingerprint`) of a split of ``dataset_dir``: the split
    settings (``test_only``: none, every image is a test image), the label CSV files and every image file below it
    (masks excluded)."""
    root = Path(dataset_dir)
    metadata = _metadata_file(root, metadata_csv)
    images = [str(p.relative_to(root)) for p in find_files(root, IMAGE_SUFFIXES).values() if not p.name.lower().endswith(MASK_SUFFIX)]
    settings = ({"indexer": f"ham10000/{INDEXER_VERSION}", "test_only": True} if test_only else
                {"indexer": f"ham10000/{INDEXER_VERSION}", "split_seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction})
    return make_fingerprint(root, settings, [p for p in (metadata, ground_truth_csv) if p], images)


def _row_changes(metadata: Path | None, content: dict) -> list[str]:
    """How the rows of ``metadata`` now differ from the items of a saved datalist ``content`` (lesion, diagnosis, rows
    added or removed), with examples: what a changed metadata file means for the split."""
    if metadata is None:
        return []
    saved = {i["image_id"]: (i["lesion_id"], i["dx"]) for fold in ("training", "validation", "test") for i in content.get(fold, [])}
    skipped = {s["image_id"] for s in content.get("meta", {}).get("skipped", [])}
    now = {r["image_id"]: (r["lesion_id"], r["dx"]) for r in read_ham_metadata(metadata)}
    changed = [f"{k} (lesion_id, dx) {saved[k]} -> {now[k]}" for k in sorted(saved) if k in now and now[k] != saved[k]]
    added = sorted(set(now) - set(saved) - skipped)
    removed = sorted(set(saved) - set(now))
    return [f"{len(rows)} row(s) {what}, e.g. {rows[0]}" for what, rows in (("changed", changed), ("added", added), ("removed", removed)) if rows]


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
    metadata = _metadata_file(root, metadata_csv)
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
    _check_one_diagnosis(records)
    images = find_files(root, IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{root}: no images ({'/'.join(IMAGE_SUFFIXES)}) found in it or its sub-folders.")
    masks = _masks_by_id(root)

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
        if ARTEFACT_KEY in r:
            item[ARTEFACT_KEY] = r[ARTEFACT_KEY]
        if mask is not None:
            item["mask"] = str(mask.relative_to(root))
        kept.append(item)
    if not kept:
        raise DatasetError(f"{root}: every row was skipped; nothing to train on.")
    return kept, skipped


def prepare_ham_datalist(
    dataset_dir: str | Path,
    datalist_file: str | Path,
    seed: int = SPLIT_SEED,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    test_only: bool = False,
    **index_kwargs,
) -> Path:
    """Index ``dataset_dir`` and write its lesion-grouped, diagnosis-stratified split to ``datalist_file`` once;
    ``test_only``: every image in the test fold instead (an external test set; the split settings are unused).

    An existing datalist is never redrawn: it is used only while its fingerprint (settings, metadata, image list)
    matches the data and settings now, else a :class:`~segx_monai.data.fingerprint.StaleSplitError` says what
    changed; masks are refreshed in it (added or removed) without moving any image between folds.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"{'test_' if test_only else ''}dataset_dir {root} does not exist or is not a folder.")
    current = ham_fingerprint(root, seed, val_fraction, test_fraction, index_kwargs.get("metadata_csv"), index_kwargs.get("ground_truth_csv"), test_only)
    if Path(datalist_file).exists():
        check_saved_split(datalist_file, current, root, explain=lambda content: _row_changes(_metadata_file(root, index_kwargs.get("metadata_csv")), content))
        masks = {image_id: str(p.relative_to(root)) for image_id, p in _masks_by_id(root).items()}
        attach_masks(datalist_file, masks, "mask", check=lambda item, mask: _check_image(root / item["image"], root / mask))
        return Path(datalist_file)
    items, skipped = index_ham10000(dataset_dir, **index_kwargs)
    if test_only:
        folds = ["test"] * len(items)
        split = {"test": "every image (an external test set)"}
    else:
        folds = split_by_group([i["lesion_id"] for i in items], [i["dx"] for i in items], val_fraction, test_fraction, seed)
        split = {"split_by": "lesion_id", "stratified_by": "dx", "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    path = write_datalist_once(
        datalist_file,
        items,
        folds,
        labels=list(HAM_CLASSES),
        meta={"dataset": "HAM10000", "dataset_dir": str(Path(dataset_dir).resolve()), **split, "skipped": skipped, "fingerprint": current},
    )
    check_saved_split(path, current, root)  # another process may have written its split first
    return path
