"""Seconds per SegX inference of one study through the MONAI Label server (monailabel_app/) vs through the bundle
directly, in one run on the same trained bundles and studies: a dermoscopy JPEG, a chest X-ray PNG and its DICOM copy.

    python benchmarks/bench_monailabel.py [--repeats 5]

Bundles are trained one epoch on a small built-in synthetic set at the demo's sizes (speed does not depend on how
well they learnt). Columns: the server's first request (model loading included) and its median warm request; the
bundle's ``python -m monai.bundle run inferring`` on the one study (a new process: start-up, parsing, loading,
writing every output), and the median warm ``run()`` of an initialized inference workflow. MONAI Label's own
environment is built first when missing (scripts/monailabel_env.sh, minutes), and its time printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monai.bundle import ConfigWorkflow

from segx_monai.data.synthetic_chest import generate_chestx_like
from segx_monai.data.synthetic_derm import generate_ham_like

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monailabel_app"))
from local_server import local_server  # noqa: E402

INFER = ["inference.yaml"]  # every bundle's standalone base; the train configs compose after it
# a study of each kind: (bundle, study suffix)
KINDS = [("ham_segx", ".jpg"), ("chestx_segx", ".png"), ("chestx_segx", ".dcm")]


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bundle_command(bundle: str, root: Path, data: Path, run_id: str, configs: list[str], **overrides) -> list[str]:
    """``python -m monai.bundle run`` of ``bundle``'s ``configs`` on ``data``, writing under ``root``."""
    configs_dir = REPO / "bundles" / bundle / "configs"
    args = {"bundle_root": root, "dataset_dir": data, "num_workers": 0, **overrides}
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", repr([str(configs_dir / c) for c in configs]),
            *[a for k, v in args.items() for a in (f"--{k}", str(v))]]


def warm_bundle_runs(bundle: str, root: Path, data: Path, study: Path, out: Path, repeats: int) -> list[float]:
    """Seconds of each ``run()`` of one initialized inference workflow on ``study`` (the first one discarded)."""
    configs_dir = REPO / "bundles" / bundle / "configs"
    workflow = ConfigWorkflow(config_file=[str(configs_dir / c) for c in INFER], meta_file=str(configs_dir / "metadata.json"),
                              workflow_type="infer", run_id="inferring", bundle_root=str(root), dataset_dir=str(data),
                              input=[str(study)], inference_dir=str(out), num_workers=0)
    workflow.initialize()
    times = [timed(workflow.run) for _ in range(repeats + 1)][1:]
    workflow.finalize()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm requests / runs per study")
    args = parser.parse_args()

    start = time.perf_counter()
    subprocess.run(["bash", str(REPO / "scripts" / "monailabel_env.sh")], check=True, stdout=subprocess.DEVNULL)
    env_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {"ham_segx": generate_ham_like(tmp / "HAM10000", n_images=40, seed=0),
                "chestx_segx": generate_chestx_like(tmp / "ChestX-Det10", n_train=32, n_test=12, seed=0)}
        roots = {bundle: tmp / bundle for bundle in data}
        for bundle, root in roots.items():
            for network in ("classifier", "segmenter"):
                subprocess.run(bundle_command(bundle, root, data[bundle], "training", [*INFER, f"train_{network}.yaml"], max_epochs=1),
                               check=True, capture_output=True)
        studies = tmp / "studies"
        subprocess.run([sys.executable, str(REPO / "monailabel_app" / "demo_studies.py"), "--out", str(studies), "--images", "1",
                        "--labels", "0", "--dicom", "1", *[a for b, r in roots.items() for a in ("--bundle", b, str(r), str(data[b]))]],
                       check=True, capture_output=True)
        manifest = json.loads((studies / "segx_studies.json").read_text())
        chosen = {kind: next(s for s, info in manifest.items() if info["bundle"] == kind[0] and s.endswith(kind[1])) for kind in KINDS}

        options = [a for b, r in roots.items() for a in ("--conf", f"{b}_overrides", json.dumps({"bundle_root": str(r), "dataset_dir": str(data[b])}))]
        rows = []
        start = time.perf_counter()
        with local_server(studies, options, tmp / "server.log") as server:
            startup = time.perf_counter() - start
            for (bundle, suffix), study in chosen.items():
                request = lambda: server.infer(f"{bundle}_segx", Path(study).stem)  # noqa: E731
                first = timed(request)
                warm = [timed(request) for _ in range(args.repeats)]
                status = request()[0]
                if status != 200:
                    raise RuntimeError(f"/infer/{bundle}_segx on {study}: HTTP {status}\n{server.tail()}")
                rows.append([bundle, suffix, first, statistics.median(warm)])
        for row, ((bundle, suffix), study) in zip(rows, chosen.items()):
            path, out = studies / study, tmp / f"out_{bundle}{suffix}"
            row.append(timed(lambda: subprocess.run(bundle_command(bundle, roots[bundle], data[bundle], "inferring", INFER, input=[str(path)],
                                                                   inference_dir=out), check=True, capture_output=True)))
            row.append(statistics.median(warm_bundle_runs(bundle, roots[bundle], data[bundle], path, out, args.repeats)))

    print(f"\nMONAI Label environment ready in {env_seconds:.0f} s; server up in {startup:.1f} s; seconds per SegX inference of one study")
    print(f"{'bundle':>11} | {'study':>5} | {'server 1st':>10} | {'server warm':>11} | {'bundle CLI':>10} | {'bundle warm':>11} | {'warm ratio':>10}")
    for bundle, suffix, first, warm, cli, bundle_warm in rows:
        print(f"{bundle:>11} | {suffix:>5} | {first:10.2f} | {warm:11.3f} | {cli:10.2f} | {bundle_warm:11.3f} | {warm / bundle_warm:10.2f}")


if __name__ == "__main__":
    main()
