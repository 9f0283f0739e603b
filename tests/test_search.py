"""Hyper-parameter search (search.yaml): grid trials end to end and resumed, two workers, a worker killed mid-trial,
pruning and a failing trial, the best-values overlay, the untouched test fold, bad input, PostgreSQL storage."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
from monai.bundle import ConfigParser
from optuna.trial import TrialState

import segx_monai.data.datalist as datalist
from conftest import CHEST_CONFIGS, HAM_CONFIGS, REPO, TINY, chest_workflow, ham_workflow
from segx_monai.search import SearchError, SearchSettings
from segx_monai.cli import main as segx_monai_cli
from segx_monai.search.study import open_storage, open_study

SEGMENTER = str(HAM_CONFIGS / "train_segmenter.yaml")
CLASSIFIER = str(HAM_CONFIGS / "train_classifier.yaml")
NARROW = [8, 8, 16, 16, 32, 8]  # a narrower U-Net than the bundle's, for speed
GRID = {"learning_rate": [1.0e-3, 1.0e-2]}


def search_workflow(bundle_root: Path, ham_dir: Path, config: str = SEGMENTER, search: dict | None = None, **overrides):
    """The bundle's ``searching`` workflow on the tiny data: ``search`` holds ``search#<key>`` values, ``overrides`` train ones."""
    search = {"train_config": config, "space": GRID, "heartbeat_interval": 1, **(search or {})}
    extra = {"segmenter_features": NARROW} if config == SEGMENTER else {}
    return ham_workflow(bundle_root, ham_dir, [Path(config).name, "search.yaml"], run_id="searching",
                        **extra, **overrides, **{f"search#{k}": v for k, v in search.items()})


def run_search_workflow(workflow):
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def load(bundle_root: Path, study_name: str = "segmenter", network: str = "segmenter") -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{bundle_root}/search/{network}.db")


def complete_values(study: optuna.Study) -> list:
    """Learning rates of the COMPLETE trials, sorted: equal to the grid when no point was lost or trained twice."""
    return sorted(t.params["learning_rate"] for t in study.trials if t.state == TrialState.COMPLETE)


def cli_overrides(bundle_root: Path, ham_dir: Path, max_epochs: int = 1) -> list[str]:
    """The tiny settings as ``--key value`` pairs of ``python -m monai.bundle run``."""
    return ["--bundle_root", str(bundle_root), "--dataset_dir", str(ham_dir), "--image_size", str(TINY["image_size"]),
            "--max_epochs", str(max_epochs), "--batch_size", str(TINY["batch_size"]), "--segmenter_features", str(NARROW),
            "--search#space", str(GRID), "--search#heartbeat_interval", "1"]


def search_error(workflow) -> SearchError:
    """The SearchError that running ``workflow`` raised (MONAI wraps it in the failed expression's RuntimeError)."""
    with pytest.raises(Exception) as info:
        run_search_workflow(workflow)
    error = info.value
    while error is not None and not isinstance(error, SearchError):
        error = error.__cause__
    assert error is not None, f"expected a SearchError, got {info.value!r}"
    return error


def test_grid_search_end_to_end_resumes_exports_the_best_values_and_never_reads_the_test_fold(ham_dir, tmp_path, monkeypatch, capsys):
    folds = []
    load_fold = datalist.load_fold
    monkeypatch.setattr(datalist, "load_fold", lambda path, fold, *a, **k: folds.append(fold) or load_fold(path, fold, *a, **k))

    run_search_workflow(search_workflow(tmp_path, ham_dir, search={"n_trials": 1}))
    first = load(tmp_path).trials
    assert [t.state for t in first] == [TrialState.COMPLETE]
    report = tmp_path / "search" / "segmenter" / "report"
    assert "needs two complete trials" in (report / "param_importances.txt").read_text()  # one trial: no importance yet
    run_search_workflow(search_workflow(tmp_path, ham_dir, search={"n_trials": 2}))  # the same command with more trials continues the study
    run_search_workflow(search_workflow(tmp_path, ham_dir, search={"n_trials": 2}))  # and once it has them, adds none
    study = load(tmp_path)
    assert len(study.trials) == 2 and study.trials[0].value == first[0].value
    assert complete_values(study) == GRID["learning_rate"]
    assert set(folds) == {"training", "validation"}  # the test fold is never loaded
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[search segmenter] trial ")]
    assert len(lines) == 2 and all("COMPLETE val_dice" in line for line in lines)

    # each trial trained in its own folder; the bundle's own model folder is untouched
    for trial in study.trials:
        assert (Path(trial.user_attrs["trial_dir"]) / "segmenter.pt").is_file()
        assert sorted(trial.intermediate_values) == [1]
    assert not (tmp_path / "models").exists()

    assert (report / "param_importances.txt").read_text().startswith("learning_rate\t")
    assert (report / "trials.csv").read_text().count("COMPLETE") == 2
    for name in ("optimization_history.png", "param_importances.png", "best_validation_curve.png", "best_validation_curve.csv"):
        assert (report / name).stat().st_size > 0, name

    overlay = tmp_path / "search" / "best_hparams_segmenter.yaml"
    header = overlay.read_text().splitlines()[0]
    assert "'segmenter'" in header and f"trial {study.best_trial.number}" in header
    parser = ConfigParser()
    parser.read_config([SEGMENTER, str(overlay)])
    assert parser.get_parsed_content("learning_rate") == study.best_trial.params["learning_rate"]
    assert parser.get_parsed_content("batch_size") == ConfigParser.load_config_file(SEGMENTER)["batch_size"]


@pytest.mark.parametrize("network", ["classifier", "segmenter"])
def test_the_chest_bundle_searches_each_network(chest_dir, tmp_path, network):
    config = str(CHEST_CONFIGS / f"train_{network}.yaml")
    extra = {"segmenter_features": NARROW} if network == "segmenter" else {}
    run_search_workflow(chest_workflow(tmp_path, chest_dir, [Path(config).name, "search.yaml"], run_id="searching", **extra,
                                       **{"search#train_config": config, "search#space": GRID, "search#heartbeat_interval": 1}))
    study = load(tmp_path, network, network)
    assert complete_values(study) == GRID["learning_rate"]
    assert all(t.value is not None and 0 <= t.value <= 1 for t in study.trials)
    overlay = ConfigParser.load_config_file(str(tmp_path / "search" / f"best_hparams_{network}.yaml"))
    assert overlay["learning_rate"] == study.best_trial.params["learning_rate"]


def test_two_workers_share_the_study(ham_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(SystemExit) as exit_:
        segx_monai_cli(["search", SEGMENTER, "--workers", "2", *cli_overrides(tmp_path, ham_dir)])  # segx-monai search ...
    assert exit_.value.code == 0
    study = load(tmp_path)
    assert complete_values(study) == GRID["learning_rate"]  # each point trained once, by one of the two processes
    assert all(t.state == TrialState.COMPLETE or "surplus" in t.user_attrs for t in study.trials)


def test_worker_killed_mid_trial_loses_nothing_on_resume(ham_dir, tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "searching", "--config_file", str([SEGMENTER, str(HAM_CONFIGS / "search.yaml")]),
               "--search#train_config", SEGMENTER, *cli_overrides(tmp_path, ham_dir)]
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        states = []
        while time.time() < deadline and worker.poll() is None:
            if "[search segmenter] grid search" in (tmp_path / "worker.log").read_text():  # its study exists
                trials = load(tmp_path).trials
                states = [t.state for t in trials]
                if states == [TrialState.COMPLETE, TrialState.RUNNING] and "trial_dir" in trials[1].user_attrs:  # trial 1 is training
                    break
            time.sleep(0.1)
        os.killpg(worker.pid, signal.SIGKILL)
    finally:
        worker.wait()
        log.close()
    assert states == [TrialState.COMPLETE, TrialState.RUNNING], (states, (tmp_path / "worker.log").read_text()[-3000:])
    completed_before = load(tmp_path).trials[0]

    run_search_workflow(search_workflow(tmp_path, ham_dir))  # the same search, started again
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == completed_before.value
    assert trials[1].state == TrialState.FAIL  # the killed trial, failed once its heartbeat stopped ...
    assert [t.system_attrs.get("retry_history") for t in trials[2:]] == [[1]]  # ... and trained again with its values
    assert trials[2].params == trials[1].params and trials[2].state == TrialState.COMPLETE
    assert complete_values(load(tmp_path)) == GRID["learning_rate"]


def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(ham_dir, tmp_path):
    always_prune = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0}  # every val_dice (<= 1) is below it
    run_search_workflow(search_workflow(tmp_path, ham_dir, search={"space": {"batch_size": [0, 8]}, "pruner": always_prune}, max_epochs=2))
    trials = {t.params["batch_size"]: t for t in load(tmp_path).trials}
    assert trials[0].state == TrialState.FAIL and "batch_size" in trials[0].user_attrs["error"]
    assert trials[8].state == TrialState.PRUNED and sorted(trials[8].intermediate_values) == [1]  # stopped after epoch 1 of 2
    assert not (tmp_path / "search" / "best_hparams_segmenter.yaml").exists()
    assert "pruned after epoch 1" in (tmp_path / "search" / "segmenter" / "report" / "trials.csv").read_text()


@pytest.mark.parametrize("search, message", [
    ({"space": {"learnin_rate": [0.1]}}, r"\['learnin_rate'\] not found in the train config"),
    ({"space": {"learning_rate": []}}, "search#space#learning_rate: empty grid list"),
    ({"space": {"learning_rate": {"low": 0.1, "high": 0.01}}, "sampler": "tpe", "n_trials": 2}, "low 0.1 > high 0.01"),
    ({"space": {"learning_rate": {"low": 0.1, "high": 0.2}}}, "the grid sampler needs a list"),
    ({"space": {"dataset_dir": ["a", "b"]}}, "cannot be searched"),
    ({"storage": "postgresql+psycopg2://search:secret@127.0.0.1:9/nowhere"}, r"search#storage postgresql\+psycopg2://search:\*\*\*@127.0.0.1:9/nowhere: cannot open it"),
])
def test_bad_input_is_refused_before_training(ham_dir, tmp_path, search, message):
    error = search_error(search_workflow(tmp_path, ham_dir, config=CLASSIFIER, search=search))
    assert re.search(message, str(error)), str(error)
    assert not (tmp_path / "search" / "classifier").exists()  # no trial folder: nothing trained


def test_a_study_of_another_search_space_is_refused(ham_dir, tmp_path):
    storage_url = f"sqlite:///{tmp_path}/other.db"
    settings = SearchSettings.from_config({"space": {"learning_rate": [0.1, 0.2]}, "storage": storage_url, "study_name": "segmenter",
                                           "train_config": SEGMENTER, "output_dir": str(tmp_path), "network": "segmenter",
                                           "best_overlay": str(tmp_path / "o.yaml")})
    open_study(open_storage(storage_url, 1)[0], settings, storage_url)
    error = search_error(search_workflow(tmp_path, ham_dir, search={"storage": storage_url}))
    assert "study 'segmenter'" in str(error) and "another search#study_name" in str(error)
    assert optuna.load_study(study_name="segmenter", storage=storage_url).trials == []


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL database on 127.0.0.1: $SEGX_TEST_POSTGRES_URL (scripts/ci_postgres.sh), else a throwaway server."""
    def skip(reason: str):
        message = f"PostgreSQL storage NOT TESTED: {reason}. Run `bash scripts/ci_postgres.sh` (root, Debian) and export its URL as SEGX_TEST_POSTGRES_URL."
        warnings.warn(message)
        print(f"\n*** {message} ***", file=sys.stderr)
        pytest.skip(message)

    if importlib.util.find_spec("psycopg2") is None:
        skip("no PostgreSQL driver (pip install psycopg2-binary)")
    if os.environ.get("SEGX_TEST_POSTGRES_URL"):
        yield os.environ["SEGX_TEST_POSTGRES_URL"]
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [shutil.which("pg_ctl")]
    if bins[-1] is None:
        skip("no PostgreSQL server installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="segx-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust"], capture_output=True, text=True)
    if started.returncode == 0:
        started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                                  "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "start"], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        skip(f"could not start a server: {started.stderr.strip()[-500:]}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_postgresql_storage(ham_dir, tmp_path, postgres_url):
    study_name = f"segmenter-{uuid.uuid4().hex[:8]}"
    run_search_workflow(search_workflow(tmp_path, ham_dir, search={"storage": postgres_url, "study_name": study_name, "n_trials": 1}))
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert study.user_attrs["definition"]["space"] == {"learning_rate": {"choices": GRID["learning_rate"]}}
    assert (tmp_path / "search" / "best_hparams_segmenter.yaml").is_file()
