"""``segx-monai search TRAIN_CONFIG [--workers N] [--KEY VALUE ...]``: the bundle's ``searching`` run, in N processes.

Each worker is ``python -m monai.bundle run searching --config_file "['TRAIN_CONFIG','search.yaml']" --KEY VALUE ...``;
the workers share the study through its storage, so N trials train at once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def worker_command(train_config: str, search_config: str, overrides: Sequence[str]) -> list[str]:
    """The bundle command of one worker; ``search#train_config`` is the given train config."""
    return [sys.executable, "-m", "monai.bundle", "run", "searching", "--config_file", repr([train_config, search_config]),
            "--search#train_config", train_config, *overrides]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="segx-monai search", description="Hyper-parameter search of a bundle train config on its validation fold (Optuna).",
        epilog="Other --KEY VALUE pairs override the config as with `python -m monai.bundle run`, e.g. --dataset_dir /data/HAM10000 "
               "--search#n_trials 20 --search#sampler tpe --search#storage postgresql+psycopg2://user:pw@host/db.",
    )
    parser.add_argument("train_config", help="train config, e.g. bundles/ham_segx/configs/train_classifier.yaml")
    parser.add_argument("--search_config", help="search config (default: search.yaml beside the train config)")
    parser.add_argument("--workers", type=int, default=1, help="processes working on the study at once (default 1)")
    args, overrides = parser.parse_known_args(argv)
    if not Path(args.train_config).is_file():
        parser.error(f"train config {args.train_config} not found")
    search_config = args.search_config or str(Path(args.train_config).parent / "search.yaml")
    if not Path(search_config).is_file():
        parser.error(f"search config {search_config} not found")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    command = worker_command(args.train_config, search_config, overrides)
    workers = [subprocess.Popen(command) for _ in range(args.workers)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: let them queue their trials again before exiting
        codes = [w.wait() for w in workers]
    raise SystemExit(max(c if c >= 0 else 128 - c for c in codes))  # a worker ended by signal N: 128 + N, as a shell says
