"""``segx-monai search TRAIN_CONFIG [--workers N] [--KEY VALUE ...]``: the bundle's search, in N processes.

TRAIN_CONFIG is a bundle's ``configs/train_<network>.yaml`` (composed after ``inference.yaml`` beside it) or the list
of train config files, ``"['a.yaml','b.yaml']"``. Each worker is ``python -m monai.bundle run_workflow
segx_monai.search.SearchWorkflow --config_file "[<train configs>,'search.yaml']" --bundle_root <bundle> --KEY VALUE ...``;
the workers share the study through its storage, so N trials train at once.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def train_configs(train_config: str) -> list[str]:
    """The trials' config files: a list literal as given; a file, after the bundle's ``inference.yaml`` beside it."""
    if train_config.lstrip().startswith("["):
        return [str(f) for f in ast.literal_eval(train_config)]
    return [str(Path(train_config).parent / "inference.yaml"), train_config]


def bundle_folder(config_file: str) -> Path:
    """The bundle of a config file: the folder above ``configs/``, as MONAI's ConfigWorkflow takes it."""
    folder = Path(config_file).parent
    return folder.parent if folder.name == "configs" else folder


def worker_command(config_files: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The bundle command of one worker: MONAI's ``run_workflow`` of :class:`segx_monai.search.SearchWorkflow`."""
    return [sys.executable, "-m", "monai.bundle", "run_workflow", "segx_monai.search.SearchWorkflow",
            "--config_file", repr(list(config_files)), *overrides]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="segx-monai search", description="Hyper-parameter search of a bundle train config on its validation fold (Optuna).",
        epilog="Other --KEY VALUE pairs override the config as with `python -m monai.bundle run`, e.g. --dataset_dir /data/HAM10000 "
               "--search#n_trials 20 --search#sampler tpe --search#storage postgresql+psycopg2://user:pw@host/db.",
    )
    parser.add_argument("train_config", help="train config, e.g. bundles/ham_segx/configs/train_classifier.yaml (composed after the "
                                             "inference.yaml beside it), or the list of config files \"['a.yaml','b.yaml']\"")
    parser.add_argument("--search_config", help="search config (default: search.yaml beside the train config)")
    parser.add_argument("--workers", type=int, default=1, help="processes working on the study at once (default 1)")
    args, overrides = parser.parse_known_args(argv)
    try:
        configs = train_configs(args.train_config)
    except (ValueError, SyntaxError) as e:
        parser.error(f"train config {args.train_config}: not a file name nor a list of them ({e})")
    search_config = args.search_config or str(Path(configs[-1]).parent / "search.yaml")
    absent = [f for f in [*configs, search_config] if not Path(f).is_file()]
    if absent:
        parser.error(f"config file(s) {absent} not found")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if not any(o == "--bundle_root" or o.startswith("--bundle_root=") for o in overrides):
        overrides = ["--bundle_root", str(bundle_folder(configs[-1])), *overrides]  # the configs' `bundle_root: .` is the bundle's own folder
    command = worker_command([*configs, search_config], overrides)
    workers = [subprocess.Popen(command) for _ in range(args.workers)]
    try:
        codes = [w.wait() for w in workers]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: let them queue their trials again before exiting
        codes = [w.wait() for w in workers]
    raise SystemExit(max(c if c >= 0 else 128 - c for c in codes))  # a worker ended by signal N: 128 + N, as a shell says
