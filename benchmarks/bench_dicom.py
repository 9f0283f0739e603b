"""Decode throughput of ``read_dicom`` per transfer syntax, on a 1024x1024 chest-X-ray-like picture; with
``--results``, the write time and size of the DICOM results of one such image (maps at 256x256).

Run from the repository root: ``python benchmarks/bench_dicom.py [--results]``. 16 bits stored, except JPEG
baseline (8 bits); the ratios are to uncompressed Explicit VR Little Endian.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from segx_monai.io import read_dicom, write_dicom_variant  # noqa: E402

SIZE = 1024
REPEATS = 5
SYNTAXES = [  # (label, transfer syntax, bits stored)
    ("uncompressed", "explicit_le", 16),
    ("JPEG baseline", "jpeg_baseline", 8),
    ("JPEG lossless", "jpeg_lossless", 16),
    ("JPEG-LS", "jpeg_ls", 16),
    ("JPEG 2000", "jpeg2000", 16),
    ("RLE", "rle", 16),
]


def chest_like_picture(size: int, seed: int = 0) -> np.ndarray:
    """Smooth lung fields and mediastinum, ribs-like bands and detector noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)
    )
    ribs = 0.1 * np.sin(40 * y + 6 * np.abs(x - 0.5)) ** 2
    picture = 0.8 - 0.5 * lungs + ribs + rng.normal(0, 0.01, (size, size))
    return np.clip(picture, 0, 1)


MAP_SIZE = 256
RESULTS = {"seg": "Segmentation", "pm": "Parametric Map", "sc": "Secondary Capture", "sr": "Comprehensive SR"}


def results() -> None:
    """Seconds to write one study's results through the inference handler (median of ``REPEATS``), with and without
    the overlay Secondary Capture, and each object's size."""
    import torch
    from ignite.engine import Engine

    from segx_monai.handlers.contract import Columns, OutputKeys
    from segx_monai.handlers.dicom_results import DicomResultsWriter

    rng = np.random.default_rng(0)
    region = torch.zeros(1, MAP_SIZE, MAP_SIZE)
    region[:, 32:224, 24:120] = region[:, 32:224, 136:232] = 1  # two lungs
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.dcm"
        study = write_dicom_variant(chest_like_picture(SIZE), source, bits=16, pixel_spacing=(0.143, 0.143)).StudyInstanceUID
        engine = Engine(lambda e, b: None)
        engine.state.batch = [{"image_id": "source", "image_path": str(source), "original_size": torch.tensor([SIZE, SIZE])}]
        row = {Columns.FINDING: "Effusion", Columns.PROBABILITY: 0.7, Columns.THRESHOLD: 0.5, Columns.CIOU: 0.3, Columns.REVIEW: 0}
        engine.state.output = [{OutputKeys.REGION_PROB: region, OutputKeys.SEGX_MAP: torch.as_tensor(rng.random((1, 1, MAP_SIZE, MAP_SIZE)), dtype=torch.float32),
                                OutputKeys.ROWS: [row]}]
        timings, sizes = {}, {}
        for overlays in (False, True):
            seconds = []
            for n in range(REPEATS + 1):  # the first: warm-up
                writer = DicomResultsWriter(Path(folder) / f"out{n}_{overlays}", region="lungs", explainer="gradcam", overlays=overlays)
                start = time.perf_counter()
                writer(engine)
                writer.write_reports(engine)
                seconds.append(time.perf_counter() - start)
            timings[overlays] = statistics.median(seconds[1:])
            for path in (Path(folder) / f"out0_{overlays}" / study).iterdir():
                sizes[path.stem.rsplit("_", 1)[-1]] = path.stat().st_size
    print(f"DICOM results of one {SIZE}x{SIZE} 16-bit source, maps at {MAP_SIZE}x{MAP_SIZE}, one explained finding")
    for kind, name in RESULTS.items():
        print(f"{name:<18} {sizes[kind]:>10} bytes")
    print(f"write time per study, SEG + PM + SR: {timings[False]:.3f} s; with the SC: {timings[True]:.3f} s (median of {REPEATS})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", action="store_true", help="time and size the DICOM results instead")
    if parser.parse_args().results:
        results()
        return
    picture = chest_like_picture(SIZE)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, syntax, bits in SYNTAXES:
            path = Path(folder) / f"{syntax}.dcm"
            write_dicom_variant(picture, path, bits=bits, transfer_syntax=syntax)
            read_dicom(path)  # warm-up: plugin imports
            seconds = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                read_dicom(path)
                seconds.append(time.perf_counter() - start)
            rows.append((label, bits, path.stat().st_size / 2**20, 1 / statistics.median(seconds)))
    baseline = rows[0][3]
    print(f"read_dicom decode throughput, {SIZE}x{SIZE}, median of {REPEATS} reads")
    print(f"{'transfer syntax':<16} {'bits':>4} {'file MiB':>9} {'images/s':>9} {'vs uncompressed':>16}")
    for label, bits, mebibytes, rate in rows:
        print(f"{label:<16} {bits:>4} {mebibytes:>9.2f} {rate:>9.1f} {rate / baseline:>15.2f}x")


if __name__ == "__main__":
    main()
