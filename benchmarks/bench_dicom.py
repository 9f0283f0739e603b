"""Decode throughput of ``read_dicom`` per transfer syntax, on a 1024x1024 chest-X-ray-like picture.

Run from the repository root: ``python benchmarks/bench_dicom.py``. 16 bits stored, except JPEG
baseline (8 bits); the ratios are to uncompressed Explicit VR Little Endian.
"""

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


def main() -> None:
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
