"""Images/s of 1 vs 2 processes (torchrun, gloo on the CPU) for a bundle's classifier training and its SegX/SegU
interpretation, in one run on the same synthetic data; each setting uses the machine's cores in total.

    python benchmarks/bench_distributed.py [--bundle ham|chest] [--n-images 240] [--image-size 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from segx_monai.data.synthetic_chest import generate_chestx_like
from segx_monai.data.synthetic_derm import generate_ham_like

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def synthetic_data(bundle: str, folder: Path, n_images: int, image_size: int) -> Path:
    """The bundle's built-in synthetic set: ``n_images`` images (a quarter of them the chest set's test split)."""
    if bundle == "chest":
        return generate_chestx_like(folder / "ChestX-Det10", n_train=n_images - n_images // 4, n_test=n_images // 4, image_size=image_size, dicom=False)
    return generate_ham_like(folder / "HAM10000", n_images=n_images, image_size=(image_size * 4 // 3, image_size), seed=0)
# ignite's own timing lines: the trainer's epoch (data, steps, epoch handlers) and the interpretation run
EPOCH_TIME = re.compile(r"SupervisedTrainer - INFO - Epoch\[2\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
RUN_TIME = re.compile(r"SupervisedEvaluator - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")


def launch(configs_dir: Path, processes: int, configs: list[str], run_id: str, overrides: dict) -> str:
    """Run a bundle workflow in ``processes`` processes (plain ``python`` for one); its log."""
    launcher, distributed = [], []
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        distributed = ["multi_gpu_train.yaml" if run_id == "training" else "multi_gpu_interpret.yaml"]
    config_files = [str(configs_dir / c) for c in configs + distributed]
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "monai.bundle", "run", run_id, "--config_file", repr(config_files), *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads},
    )
    if done.returncode:
        raise RuntimeError(f"{run_id} in {processes} processes failed:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def seconds(pattern: re.Pattern, log: str) -> float:
    """The slowest rank's time of the logged step."""
    return max(int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in pattern.findall(log))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=("ham", "chest"), default="ham")
    parser.add_argument("--n-images", type=int, default=240)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch; each of N processes takes 1/N of it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configs_dir = BUNDLES / {"ham": "ham_segx", "chest": "chestx_segx"}[args.bundle] / "configs"
        data = synthetic_data(args.bundle, Path(tmp), args.n_images, args.image_size)
        common = {"dataset_dir": data, "image_size": args.image_size, "num_workers": 0}
        root = Path(tmp) / "bundle"
        for network in ("classifier", "segmenter"):  # the networks the interpretation runs use
            launch(configs_dir, 1, ["inference.yaml", f"train_{network}.yaml"], "training",
                   {**common, "bundle_root": root, "max_epochs": 1, "batch_size": args.batch_size})
        folds = json.loads(next((root / "datalists").glob("*.json")).read_text())
        rows = []
        for processes in (1, 2):
            train = {**common, "bundle_root": Path(tmp) / f"bundle_{processes}", "max_epochs": 2,
                     "val_interval": 1000, "batch_size": args.batch_size // processes}
            log = launch(configs_dir, processes, ["inference.yaml", "train_classifier.yaml"], "training", train)
            train_rate = len(folds["training"]) / seconds(EPOCH_TIME, log)
            log = launch(configs_dir, processes, ["inference.yaml", "interpret.yaml"], "interpreting",
                         {**common, "bundle_root": root, "interpret_dir": Path(tmp) / f"interpret_{processes}"})
            rows.append((processes, train_rate, len(folds["test"]) / seconds(RUN_TIME, log)))
    print(f"\n{args.bundle}: {args.n_images} images, {args.image_size} px, global batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'processes':>9} | {'train img/s':>11} | {'speed-up':>8} | {'interpret img/s':>15} | {'speed-up':>8}")
    for processes, train_rate, interpret_rate in rows:
        print(f"{processes:>9} | {train_rate:11.1f} | {train_rate / rows[0][1]:8.2f} | {interpret_rate:15.1f} | {interpret_rate / rows[0][2]:8.2f}")


if __name__ == "__main__":
    main()
