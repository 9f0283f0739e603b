"""Time and peak memory per image of the ham_segx bundle's ``load_image`` transforms, from 600x450 to 8000x6000 JPEG:
the image decoded whole (``rgb_reader()``, as before reduced decoding) vs the bundle's reader (draft mode and box
reduction to twice ``image_size``, then the same anti-aliased resize).

    python benchmarks/bench_large_images.py [--image-size 224] [--timeout 300] [--threads 1] [--sizes 8000x6000 ...]

Each measurement runs in a fresh process (peak memory is ``getrusage`` max RSS, so one image per process), after a
warm-up on a small image; the MiB shown is that process's max RSS growth while reading the image, with its peak RSS
(torch and MONAI included) in brackets. A read longer than ``--timeout`` seconds is stopped and shown with its peak
RSS so far.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = [(600, 450), (1024, 768), (2000, 1500), (4000, 3000), (8000, 6000)]  # (width, height)
PATHS = {"old": "$segx_monai.data.readers.rgb_reader()", "new": None}  # reader override; None: the bundle's own


def write_photo(path: Path, width: int, height: int) -> None:
    """A smooth colour picture with fine noise, saved as a quality-90 JPEG (like a dermoscopy photograph)."""
    import numpy as np
    from PIL import Image

    y, x = np.ogrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    picture = np.empty((height, width, 3), np.uint8)
    picture[..., 0] = 128 + 100 * np.sin(x / width * 7) * np.cos(y / height * 5)
    picture[..., 1] = 255 * x // width
    picture[..., 2] = 255 * y // height
    picture += rng.integers(0, 8, picture.shape, dtype=np.uint8)
    Image.fromarray(picture).save(path, quality=90)


def measure_one(image: str, path: str, image_size: int, threads: int) -> dict:
    """Read one image through the bundle's ``load_image`` in this process: seconds and memory."""
    import resource
    import time

    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "ham_segx" / "configs" / "inference.yaml"))  # load_image is defined there
    parser.update({"image_size": image_size, **({"load_image#0#reader": PATHS[path]} if PATHS[path] else {})})
    parser.get_parsed_content("imports")
    load = Compose(parser.get_parsed_content("load_image"))
    with tempfile.TemporaryDirectory() as folder:  # warm-up: lazy imports and first-call set-up are not the image's cost
        write_photo(Path(folder) / "warm.jpg", 64, 48)
        load({"image": str(Path(folder) / "warm.jpg")})
    print("ready", flush=True)  # the parent's timeout starts now, not counting start-up on a busy machine
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = load({"image": image})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert tuple(out["image"].shape) == (3, image_size, image_size)
    return {"seconds": seconds, "peak_mib": peak / 1024, "load_mib": (peak - before) / 1024}


def run_child(image: Path, path: str, args) -> dict:
    """:func:`measure_one` in a fresh interpreter; past the timeout (from its "ready", after start-up) it is killed,
    after reading its peak RSS so far (``VmHWM``, Linux) into ``peak_mib``, and ``stopped`` is set."""
    command = [sys.executable, __file__, "--one", str(image), "--path", path, "--image-size", str(args.image_size), "--threads", str(args.threads)]
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True) as process:
        try:
            if process.stdout.readline().strip() == "ready":
                process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{process.pid}/status")
            lines = status.read_text().splitlines() if status.exists() else []
            peak = next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), float("nan"))
            process.kill()
            return {"stopped": True, "seconds": args.timeout, "peak_mib": peak}
        out = process.stdout.read()
        if process.wait():
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{errors.read()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="*", default=[f"{w}x{h}" for w, h in SIZES], help="WIDTHxHEIGHT ...")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.path, args.image_size, args.threads)))
        return

    def seconds(result: dict) -> str:
        return f">{result['seconds']:.0f} s (stopped)" if result.get("stopped") else f"{result['seconds']:.2f} s"

    def memory(result: dict) -> str:
        return f">={result['peak_mib']:.0f} peak" if result.get("stopped") else f"{result['load_mib']:.0f} ({result['peak_mib']:.0f})"

    def ratio(old: dict, new: dict, key: str) -> str:
        return f"{'>' if old.get('stopped') else ''}{old[key] / max(new[key], 1e-3):.1f}x"

    print(f"ham_segx load_image per JPEG, image_size {args.image_size}, {args.threads} thread(s); old = decoded whole, "
          "new = draft + reduce; MiB = max RSS growth while reading (peak RSS of the process)")
    header = f"{'image':>10} {'file MiB':>8} | {'old':>16} {'new':>8} {'ratio':>7} | {'old MiB':>14} {'new MiB':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            image = Path(folder) / f"{size}.jpg"
            write_photo(image, width, height)
            old, new = run_child(image, "old", args), run_child(image, "new", args)
            memory_ratio = ratio(old, new, "peak_mib") + " peak" if old.get("stopped") else ratio(old, new, "load_mib")
            print(
                f"{size:>10} {image.stat().st_size / 2**20:>8.1f} | {seconds(old):>16} {seconds(new):>8} "
                f"{ratio(old, new, 'seconds'):>7} | {memory(old):>14} {memory(new):>12} {memory_ratio:>7}",
                flush=True,
            )

if __name__ == "__main__":
    main()
