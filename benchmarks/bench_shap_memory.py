"""GradientSHAP's time and peak memory per setting (image size, batch, draws, memory budget), each in a fresh process.

    python benchmarks/bench_shap_memory.py [--settings 224:1:10 224:16:10 ...] [--rounds 1] [--memory-mb 2048] [--threads N]

Set-up per process: MONAI DenseNet121 (3 -> 7 classes, random weights, eval mode), a random batch of B images of
S x S px, 50 random reference images (``--n-baselines``), the package's ``GradientShap`` with ``n_samples`` draws
and ``memory_mb``, predicted classes. It runs one pass of the same size to warm up, then explains the batch, timed.
A setting ``S:B:N[:MB]`` is image size, batch, draws and optionally its own budget (default ``--memory-mb``); one
given twice runs twice (e.g. around a slow one, so that a load that changes hits both alike).
Peak RSS is the process's ``getrusage`` max RSS; "set-up" is the RSS before the first explanation (torch, MONAI,
network, images, references); "SHAP" = peak - set-up, the part the budget bounds. Settings run one process
at a time, in ``--rounds`` rounds whose order rotates so that a load shared with other processes hits them alike;
ms/image (wall) and CPU ms/image (the process's CPU time, less sensitive to other processes' load) are medians over
a setting's runs, memory the largest. "vs B=1": divided by that of the same size, draws and budget at batch 1 (below
1 = batching is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# 8 minutes on a loaded 2-core machine: draws 10..200 at 224 px (batch 1 on both sides of batch 16); a smaller budget;
# at 512 px (5x the activations per image, 3 rows per pass) one draw, batch 1 on both sides of batch 16
SETTINGS = ["224:1:10", "224:16:10", "224:1:10", "224:1:10:512", "224:1:50", "224:1:200", "512:1:1", "512:16:1", "512:1:1"]


def measure_one(size: int, batch: int, n_samples: int, memory_mb: float, n_baselines: int, threads: int) -> dict:
    """Explain one batch with GradientShap in this process: ms/image, rows per pass and memory (MiB)."""
    import math
    import resource
    import time

    import torch
    from monai.networks.nets import DenseNet121

    from segx_monai.explainers import GradientShap

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    model = DenseNet121(spatial_dims=2, in_channels=3, out_channels=7).eval()
    images = torch.randn(batch, 3, size, size, generator=generator)
    baselines = torch.randn(n_baselines, 3, size, size, generator=generator)
    with torch.no_grad():
        targets = model(images).argmax(1)
    setup = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024  # RSS now (Linux)
    shap = GradientShap(model, baselines, n_samples=n_samples, memory_mb=memory_mb)
    rows = shap.rows_per_pass(images)
    first = min(batch, rows)  # warm-up: one pass of the same size; first-call set-up is not the setting's cost
    warm = GradientShap(model, baselines, n_samples=min(n_samples, math.ceil(rows / first)), memory_mb=memory_mb)
    warm(images[:first], targets[:first])
    cpu, start = time.process_time(), time.perf_counter()
    shap(images, targets)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms_per_image": 1000 * seconds / batch, "cpu_ms_per_image": 1000 * cpu / batch, "rows_per_pass": rows, "passes": math.ceil(batch * n_samples / rows),
            "setup_mib": setup / 1024, "peak_mib": peak / 1024}


def run_child(setting: tuple, args) -> dict:
    """:func:`measure_one` in a fresh interpreter, so that each max RSS is that setting's alone."""
    command = [sys.executable, __file__, "--one", json.dumps([*setting, args.n_baselines, args.threads])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_setting(text: str, memory_mb: float) -> tuple[int, int, int, float]:
    """``S:B:N[:MB]`` -> (size, batch, n_samples, memory_mb)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"--settings {text!r}: expected SIZE:BATCH:N_SAMPLES[:MEMORY_MB]")
    return int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3]) if len(parts) == 4 else memory_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=SETTINGS, help="SIZE:BATCH:N_SAMPLES[:MEMORY_MB] ...")
    parser.add_argument("--memory-mb", type=float, default=2048.0, help="GradientSHAP budget (the bundles' shap_memory_mb)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the settings, in rotating order")
    parser.add_argument("--n-baselines", type=int, default=50, help="GradientSHAP reference images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(*json.loads(args.one))))
        return

    settings = [parse_setting(text, args.memory_mb) for text in args.settings]
    results: dict[tuple, list[dict]] = {s: [] for s in settings}  # by setting, in first-run order
    for round_ in range(args.rounds):
        shift = round_ % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            results[setting].append(run_child(setting, args))
            print(f"round {round_ + 1}/{args.rounds} {setting}: {results[setting][-1]}", file=sys.stderr, flush=True)

    ms = {s: statistics.median(r["ms_per_image"] for r in runs) for s, runs in results.items()}
    cpu = {s: statistics.median(r["cpu_ms_per_image"] for r in runs) for s, runs in results.items()}
    print(f"GradientSHAP, DenseNet121 (7 classes), {args.n_baselines} references, {args.threads} thread(s), "
          f"{args.rounds} round(s); MiB = max RSS")
    header = (f"{'px':>4} {'batch':>5} {'draws':>5} {'budget MB':>9} {'rows/pass':>9} {'passes':>6} | {'runs':>4} {'ms/image':>9} "
              f"{'vs B=1':>6} {'CPU ms/image':>12} {'vs B=1':>6} | {'set-up MiB':>10} {'peak MiB':>9} {'SHAP MiB':>9}")
    print(header)
    print("-" * len(header))
    for (size, batch, n_samples, memory_mb), runs in results.items():
        key, single = (size, batch, n_samples, memory_mb), (size, 1, n_samples, memory_mb)
        setup, peak = max(r["setup_mib"] for r in runs), max(r["peak_mib"] for r in runs)
        shap_mib = max(r["peak_mib"] - r["setup_mib"] for r in runs)
        ratio, cpu_ratio = (f"{v[key] / v[single]:.2f}" if single in v and batch > 1 else "" for v in (ms, cpu))
        print(f"{size:>4} {batch:>5} {n_samples:>5} {memory_mb:>9.0f} {runs[0]['rows_per_pass']:>9} {runs[0]['passes']:>6} | "
              f"{len(runs):>4} {ms[key]:>9.0f} {ratio:>6} {cpu[key]:>12.0f} {cpu_ratio:>6} | {setup:>10.0f} {peak:>9.0f} {shap_mib:>9.0f}")


if __name__ == "__main__":
    main()
