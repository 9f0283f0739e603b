"""Write a MONAI Label studies folder from the test folds of the bundles' data sets: dermoscopy JPEGs, chest X-ray
PNGs and their DICOM copies, the first few of each with a final label (the ground-truth region as a 0/1 label map,
MONAI Label's convention) so that the segmenters can be trained from the datastore at once.

Runs in the project's environment (``.venv``), not MONAI Label's::

    python monailabel_app/demo_studies.py --out data/monailabel_studies \\
        --bundle ham_segx bundles/ham_segx bundles/ham_segx/data/synthetic \\
        --bundle chestx_segx bundles/chestx_segx bundles/chestx_segx/data/synthetic

Study names start with ``ham_`` or ``chest_`` (``--conf <bundle>_train_studies`` selects them for training); DICOM
copies end in ``_dicom.dcm``. ``segx_studies.json`` records each study's bundle, source image and ground-truth mask.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from PIL import Image

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
PREFIXES = {"ham_segx": "ham", "chestx_segx": "chest"}
DICOM_FOLDER = "dicom"  # where the synthetic chest set keeps the DICOM copy of each image
MANIFEST = "segx_studies.json"


def test_items(bundle: str, bundle_root: Path, dataset_dir: Path) -> list[dict]:
    """``{"image", "label"}`` items of the bundle's test fold (the saved split its training used)."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES_DIR / bundle / "configs" / name) for name in ("inference.yaml", "train_segmenter.yaml")])
    parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(dataset_dir)})
    return parser.get_parsed_content("train_items")("test")


def dicom_copy(dataset_dir: Path, image: Path) -> Path | None:
    """The DICOM copy of ``image`` in the data set's DICOM folder (with or without ``.dcm``), if there is one."""
    return next((p for p in (dataset_dir / DICOM_FOLDER / f"{image.stem}.dcm", dataset_dir / DICOM_FOLDER / image.stem) if p.is_file()), None)


def write_label(mask: Path, path: Path) -> None:
    """A 0/255 ground-truth mask as a 0/1 label map PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8)).save(path)


def write_studies(out: Path, bundles: list[tuple[str, Path, Path]], n_images: int = 6, n_labels: int = 3, n_dicom: int = 2) -> dict:
    """Copy ``n_images`` test images per bundle (and ``n_dicom`` DICOM copies where the data set has them) into ``out``,
    label the first ``n_labels`` of each kind, write and return the manifest ``{study file: {bundle, source, mask}}``."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for bundle, bundle_root, dataset_dir in bundles:
        items = test_items(bundle, bundle_root, dataset_dir)[:n_images]
        if not items:
            raise ValueError(f"{bundle}: no test images with a mask in {dataset_dir}")
        copies = [(Path(i["image"]), "", Path(i["label"])) for i in items]
        dicoms = [(d, "_dicom", Path(i["label"])) for i in items if (d := dicom_copy(dataset_dir, Path(i["image"])))]
        for kind in (copies, dicoms[:n_dicom]):
            for n, (source, tag, mask) in enumerate(kind):
                study = f"{PREFIXES[bundle]}_{source.stem}{tag}{source.suffix or '.dcm'}"
                shutil.copyfile(source, out / study)
                if n < n_labels:
                    write_label(mask, out / "labels" / "final" / f"{Path(study).stem}.png")
                manifest[study] = {"bundle": bundle, "source": str(source), "mask": str(mask)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="studies folder to write")
    parser.add_argument("--bundle", nargs=3, action="append", required=True, metavar=("NAME", "BUNDLE_ROOT", "DATASET_DIR"),
                        help=f"a bundle ({', '.join(PREFIXES)}), its root (saved split) and its data set; repeatable")
    parser.add_argument("--images", type=int, default=6, help="test images per bundle")
    parser.add_argument("--labels", type=int, default=3, help="of those, how many get a final label")
    parser.add_argument("--dicom", type=int, default=2, help="DICOM copies per bundle, where the data set has them")
    args = parser.parse_args(argv)
    unknown = [name for name, *_ in args.bundle if name not in PREFIXES]
    if unknown:
        parser.error(f"unknown bundle(s) {unknown}; expected {', '.join(PREFIXES)}")
    manifest = write_studies(args.out, [(n, Path(r), Path(d)) for n, r, d in args.bundle], args.images, args.labels, args.dicom)
    print(f"{len(manifest)} studies -> {args.out}")


if __name__ == "__main__":
    main()
