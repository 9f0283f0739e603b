"""Datalists written once and read by every workflow: one saved split per data set, never redrawn."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from segx_monai.io.dicom import is_dicom


class DatasetError(ValueError):
    """A data set file, row or folder that is not what the indexer expects; the message names it."""


def walk_files(root: str | Path, excluded: Path | None = None) -> Iterator[Path]:
    """Every file below ``root`` in sorted order, following symlinked folders (data sets are often linked in), each
    real folder once so that a link loop ends; the folder ``excluded`` (a resolved path) and what is below it are left out."""
    seen = {Path(root).resolve()}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        kept = []
        for sub in sorted(subfolders):
            real = (Path(folder) / sub).resolve()
            if real not in seen and real != excluded:
                seen.add(real)
                kept.append(sub)
        subfolders[:] = kept
        yield from (Path(folder) / name for name in sorted(names))


def find_files(root: Path, suffixes: Sequence[str], by_name: bool = False) -> dict[str, Path]:
    """Files below ``root`` (symlinked folders included) ending in one of ``suffixes``, keyed by file name
    (``by_name``) or by name minus the suffix.

    The same key found in two folders is an error: a file copied twice would otherwise be indexed at random.
    """
    found: dict[str, Path] = {}
    lowered = tuple(s.lower() for s in suffixes)
    for path in walk_files(root):
        name = path.name
        suffix = next((s for s in lowered if name.lower().endswith(s)), None)
        if suffix is None:
            continue
        key = name if by_name else name[: -len(suffix)]
        if key in found:
            raise DatasetError(f"{key!r} found twice: {found[key]} and {path}; expected each file once below {root}.")
        found[key] = path
    return found


def datalist_path(bundle_root: str | Path, dataset_dir: str | Path, test_only: bool = False) -> Path:
    """Where a bundle keeps the split of ``dataset_dir`` (``test_only``: its index as an external test set): one file
    per data set folder and use, so switching data sets never mixes splits."""
    resolved = Path(dataset_dir).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    return Path(bundle_root) / "datalists" / f"{resolved.name}-{digest}{'-test' if test_only else ''}.json"


def same_folder(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one folder, relative paths and links resolved."""
    return Path(first).resolve() == Path(second).resolve()


def external_test_set(test_datalist: str | Path, test_dataset_dir: str | Path, datalist: str | Path, dataset_dir: str | Path) -> Path:
    """``test_datalist`` (every image of ``test_dataset_dir`` in its test fold), once no image id of it is found in the
    training or validation fold of ``datalist``, the split of ``dataset_dir`` the model is trained on."""
    split = json.loads(Path(datalist).read_text())
    fold_of = {item["image_id"]: fold for fold in ("training", "validation") for item in split.get(fold, [])}
    shared = sorted(i["image_id"] for i in json.loads(Path(test_datalist).read_text())["test"] if i["image_id"] in fold_of)
    if shared:
        folds = sorted({fold_of[i] for i in shared})
        raise DatasetError(
            f"test_dataset_dir {test_dataset_dir} shares {len(shared)} image id(s) with the {' and '.join(folds)} fold "
            f"of dataset_dir {dataset_dir} (split {datalist}), e.g. {', '.join(shared[:3])}; expected an external test "
            "set of images the model was neither trained nor validated on."
        )
    return Path(test_datalist)


def write_datalist_once(path: str | Path, items: Sequence[dict], folds: Sequence[str], labels: Sequence[str], meta: dict) -> Path:
    """Write ``{"training", "validation", "test", "labels", "meta"}`` to ``path`` unless it exists (atomic, safe between processes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {fold: [i for i, f in zip(items, folds) if f == fold] for fold in ("training", "validation", "test")}
    content.update(labels=list(labels), meta=meta)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(content, f, indent=1)
    try:
        os.link(f.name, path)  # fails if another process wrote the split first: theirs is kept
    except FileExistsError:
        pass
    finally:
        os.unlink(f.name)
    return path


PATH_KEYS = ("image", "mask", "lung_mask")
# an item's acquisition artefacts where the data set records them (a HAM10000 metadata column of names, ';' between
# several; a ChestX-Det entry field, a list of names): evaluation then scores images whose artefacts agree with the
# training fold's artefact-class association apart from the others
ARTEFACT_KEY = "artefact"


def load_fold(datalist_file: str | Path, fold: str, dataset_dir: str | Path, require: str | None = None) -> list[dict]:
    """The items of one fold with their path keys (:data:`PATH_KEYS`) made absolute against ``dataset_dir``; only the
    items having key ``require`` if given. Other strings (ids, diagnoses) are left alone, whatever files exist."""
    content = json.loads(Path(datalist_file).read_text())
    if fold not in content:
        raise DatasetError(f"{datalist_file}: no fold {fold!r}; it has {[k for k in content if isinstance(content[k], list)]}.")
    items = [{k: str(Path(dataset_dir) / v) if k in PATH_KEYS else v for k, v in item.items()} for item in content[fold]]
    if require is not None:
        items = [i for i in items if require in i]
    if not items:
        raise DatasetError(f"{datalist_file}: fold {fold!r} has no items{f' with a {require!r}' if require else ''}.")
    return items


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class weights ``N / (K * n_k)`` for an imbalanced single-label training set (classes absent from it get weight 0)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0).float()


def segmentation_items(items: Sequence[dict], mask_key: str = "mask") -> list[dict]:
    """``{"image", "label"}`` pairs for a segmenter (MONAI's and MONAI Label's key names) from items that have ``mask_key``."""
    return [{"image": i["image"], "label": i[mask_key]} for i in items if mask_key in i]


def image_items(inputs: str | Path | Sequence[str | Path], suffixes: Sequence[str] = (".jpg", ".jpeg", ".png", ".dcm")) -> list[dict]:
    """``{"image", "image_id", "image_path"}`` items for inference from a folder (searched recursively, following
    symlinked folders) or a list of image files; ``image_path`` survives loading, for writers that go back to the
    source file (DICOM UIDs)."""
    if isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
        paths = sorted(p for p in walk_files(inputs) if p.is_file() and (p.suffix.lower() in suffixes or (not p.suffix and is_dicom(p))))
        if not paths:
            raise DatasetError(f"{inputs}: no images ({'/'.join(suffixes)}) found in it or its sub-folders.")
    else:
        paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"input image(s) not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [{"image": str(p), "image_id": p.stem, "image_path": str(p)} for p in paths]


def positive_weights(labels: Sequence[Sequence[float]]) -> torch.Tensor:
    """``BCEWithLogitsLoss`` positive weights ``n_negative / n_positive`` per class of a multi-hot training set (1 when absent)."""
    labels = torch.as_tensor([list(label) for label in labels], dtype=torch.float64)
    positives = labels.sum(0)
    return torch.where(positives > 0, (len(labels) - positives) / positives.clamp(min=1), 1.0).float()
