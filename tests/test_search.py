"""Hyper-parameter search (search.yaml): called from Python with explicit config files and overrides, grid trials end
to end and resumed, two workers, a worker killed mid-trial, pruning and a failing trial, the best-values overlay, the
untouched test fold, bad input, PostgreSQL storage."""

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
import segx_monai.search.study as search_study
from conftest import CHEST_CONFIGS, CHEST_TINY, HAM_CONFIGS, REPO, TINY, TRAIN_CONFIGS, cli_settings
from segx_monai.bundle.errors import ConfigError
from segx_monai.cli import main as segx_monai_cli
from segx_monai.search import SearchError, SearchSettings, search
from segx_monai.search.cli import worker_command
from segx_monai.search.study import open_storage, open_study

SEGMENTER = [str(HAM_CONFIGS / c) for c in TRAIN_CONFIGS["segmenter"]]  # inference.yaml, train_segmenter.yaml
CLASSIFIER = [str(HAM_CONFIGS / c) for c in TRAIN_CONFIGS["classifier"]]
SEARCH = str(HAM_CONFIGS / "search.yaml")
NARROW = [8, 8, 16, 16, 32, 8]  # a narrower U-Net than the bundle's, for speed
GRID = {"learning_rate": [1.0e-3, 1.0e-2]}


def ham_search(bundle_root: Path, ham_dir: Path, train_config: list[str] = SEGMENTER, search_settings: dict | None = None, **overrides) -> optuna.Study:
    """``search`` of the HAM bundle on the tiny data: ``search_settings`` holds ``search#<key>`` values, ``overrides`` train ones."""
    config_files = [*train_config, SEARCH]
    tiny = cli_settings(HAM_CONFIGS, [Path(f).name for f in config_files], TINY)
    extra = {"segmenter_features": NARROW} if train_config == SEGMENTER else {}
    settings = {"space": GRID, "heartbeat_interval": 1, **(search_settings or {})}
    return search(config_files, {"bundle_root": str(bundle_root), "dataset_dir": str(ham_dir), **tiny, **extra, **overrides,
                                 **{f"search#{k}": v for k, v in settings.items()}})


def load(bundle_root: Path, study_name: str = "segmenter", network: str = "segmenter") -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{bundle_root}/search/{network}.db")


def complete_values(study: optuna.Study) -> list:
    """Learning rates of the COMPLETE trials, sorted: equal to the grid when no point was lost or trained twice."""
    return sorted(t.params["learning_rate"] for t in study.trials if t.state == TrialState.COMPLETE)


def cli_overrides(bundle_root: Path, ham_dir: Path, max_epochs: int = 1) -> list[str]:
    """The tiny settings as ``--key value`` pairs of ``python -m monai.bundle run_workflow``."""
    return ["--bundle_root", str(bundle_root), "--dataset_dir", str(ham_dir), "--image_size", str(TINY["image_size"]),
            "--max_epochs", str(max_epochs), "--batch_size", str(TINY["batch_size"]), "--segmenter_features", str(NARROW),
            "--search#space", str(GRID), "--search#heartbeat_interval", "1"]


def search_error(bundle_root: Path, ham_dir: Path, **kwargs) -> SearchError:
    """The SearchError that :func:`ham_search` raised."""
    with pytest.raises(SearchError) as info:
        ham_search(bundle_root, ham_dir, **kwargs)
    return info.value


def test_search_from_python_gives_every_trial_its_overrides(ham_dir, tmp_path, monkeypatch):
    trials = []  # every train workflow the search builds: one to check the space's ids, then one per trial
    make = search_study.trial_workflow
    monkeypatch.setattr(search_study, "trial_workflow", lambda *args: trials.append(make(*args)) or trials[-1])
    for size in (32, 48):
        study = ham_search(tmp_path / str(size), ham_dir, search_settings={"n_trials": 1}, image_size=size)
        assert study.study_name == "segmenter" and [t.state for t in study.trials] == [TrialState.COMPLETE]
    trained = [w for w in trials if Path(w.parser["output_dir"]).name == "trial_0000"]
    assert [w.parser.get_parsed_content("image_size") for w in trained] == [32, 48]
    assert [tuple(w.parser.get_parsed_content("train#dataset")[0]["image"].shape[-2:]) for w in trained] == [(32, 32), (48, 48)]
    assert all(w.parser.get_parsed_content("segmenter_features") == NARROW and "search" not in w.parser for w in trained)


def test_an_unknown_override_from_python_is_refused_before_training(ham_dir, tmp_path):
    with pytest.raises(ConfigError, match="--imag_size: no such config key; nearest: image_size"):
        ham_search(tmp_path, ham_dir, imag_size=48)
    assert not (tmp_path / "search").exists()


def test_grid_search_end_to_end_resumes_exports_the_best_values_and_never_reads_the_test_fold(ham_dir, tmp_path, monkeypatch, capsys):
    folds = []
    load_fold = datalist.load_fold
    monkeypatch.setattr(datalist, "load_fold", lambda path, fold, *a, **k: folds.append(fold) or load_fold(path, fold, *a, **k))

    ham_search(tmp_path, ham_dir, search_settings={"n_trials": 1})
    first = load(tmp_path).trials
    assert [t.state for t in first] == [TrialState.COMPLETE]
    report = tmp_path / "search" / "segmenter" / "report"
    assert "needs two complete trials" in (report / "param_importances.txt").read_text()  # one trial: no importance yet
    ham_search(tmp_path, ham_dir, search_settings={"n_trials": 2})  # the same search with more trials continues the study
    ham_search(tmp_path, ham_dir, search_settings={"n_trials": 2})  # and once it has them, adds none
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
    parser.read_config([*SEGMENTER, str(overlay)])
    assert parser.get_parsed_content("learning_rate") == study.best_trial.params["learning_rate"]
    assert parser.get_parsed_content("batch_size") == ConfigParser.load_config_files(SEGMENTER)["batch_size"]
    assert str([*SEGMENTER, str(overlay)]) in overlay.read_text()  # its header's training command composes the train configs


@pytest.mark.parametrize("network", ["classifier", "segmenter"])
def test_the_chest_bundle_searches_each_network(chest_dir, tmp_path, network):
    names = [*TRAIN_CONFIGS[network], "search.yaml"]
    extra = {"segmenter_features": NARROW} if network == "segmenter" else {}
    study = search([str(CHEST_CONFIGS / c) for c in names], {"bundle_root": str(tmp_path), "dataset_dir": str(chest_dir), **extra,
                   **cli_settings(CHEST_CONFIGS, names, CHEST_TINY), "search#space": GRID, "search#heartbeat_interval": 1})
    assert study.study_name == network and load(tmp_path, network, network).trials == study.trials
    assert complete_values(study) == GRID["learning_rate"]
    assert all(t.value is not None and 0 <= t.value <= 1 for t in study.trials)
    overlay = ConfigParser.load_config_file(str(tmp_path / "search" / f"best_hparams_{network}.yaml"))
    assert overlay["learning_rate"] == study.best_trial.params["learning_rate"]


def test_two_workers_share_the_study(ham_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(SystemExit) as exit_:
        segx_monai_cli(["search", SEGMENTER[-1], "--workers", "2", *cli_overrides(tmp_path, ham_dir)])  # segx-monai search ...
    assert exit_.value.code == 0
    study = load(tmp_path)
    assert complete_values(study) == GRID["learning_rate"]  # each point trained once, by one of the two processes
    assert all(t.state == TrialState.COMPLETE or "surplus" in t.user_attrs for t in study.trials)


def test_segx_monai_search_composes_the_bundle_configs(monkeypatch):
    commands = []

    class Worker:  # records the worker's command instead of running it
        def __init__(self, command):
            commands.append(command)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Worker)
    for train_config in (SEGMENTER[-1], str(SEGMENTER)):  # train_segmenter.yaml, or the list of config files
        with pytest.raises(SystemExit) as exit_:
            segx_monai_cli(["search", train_config, "--workers", "2", "--image_size", "48"])
        assert exit_.value.code == 0
    # inference.yaml beside it first, search.yaml last, and from the repository root the bundle's folder as bundle_root
    assert commands == [worker_command([*SEGMENTER, SEARCH], ["--bundle_root", str(HAM_CONFIGS.parent), "--image_size", "48"])] * 4


def test_worker_killed_mid_trial_loses_nothing_on_resume(ham_dir, tmp_path):
    command = worker_command([*SEGMENTER, SEARCH], cli_overrides(tmp_path, ham_dir))  # python -m monai.bundle run_workflow ...
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

    ham_search(tmp_path, ham_dir)  # the same search, started again
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == completed_before.value
    assert trials[1].state == TrialState.FAIL  # the killed trial, failed once its heartbeat stopped ...
    assert [t.system_attrs.get("retry_history") for t in trials[2:]] == [[1]]  # ... and trained again with its values
    assert trials[2].params == trials[1].params and trials[2].state == TrialState.COMPLETE
    assert complete_values(load(tmp_path)) == GRID["learning_rate"]


def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(ham_dir, tmp_path):
    always_prune = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0}  # every val_dice (<= 1) is below it
    ham_search(tmp_path, ham_dir, search_settings={"space": {"batch_size": [0, 8]}, "pruner": always_prune}, max_epochs=2)
    trials = {t.params["batch_size"]: t for t in load(tmp_path).trials}
    assert trials[0].state == TrialState.FAIL and "batch_size" in trials[0].user_attrs["error"]
    assert trials[8].state == TrialState.PRUNED and sorted(trials[8].intermediate_values) == [1]  # stopped after epoch 1 of 2
    assert not (tmp_path / "search" / "best_hparams_segmenter.yaml").exists()
    assert "pruned after epoch 1" in (tmp_path / "search" / "segmenter" / "report" / "trials.csv").read_text()


@pytest.mark.parametrize("settings, message", [
    ({"space": {"learnin_rate": [0.1]}}, r"\['learnin_rate'\] not found in the train config"),
    ({"space": {"learning_rate": []}}, "search#space#learning_rate: empty grid list"),
    ({"space": {"learning_rate": {"low": 0.1, "high": 0.01}}, "sampler": "tpe", "n_trials": 2}, "low 0.1 > high 0.01"),
    ({"space": {"learning_rate": {"low": 0.1, "high": 0.2}}}, "the grid sampler needs a list"),
    ({"space": {"dataset_dir": ["a", "b"]}}, "cannot be searched"),
    ({"storage": "postgresql+psycopg2://search:secret@127.0.0.1:9/nowhere"}, r"search#storage postgresql\+psycopg2://search:\*\*\*@127.0.0.1:9/nowhere: cannot open it"),
])
def test_bad_input_is_refused_before_training(ham_dir, tmp_path, settings, message):
    error = search_error(tmp_path, ham_dir, train_config=CLASSIFIER, search_settings=settings)
    assert re.search(message, str(error)), str(error)
    assert not (tmp_path / "search" / "classifier").exists()  # no trial folder: nothing trained


def test_a_study_of_another_search_space_is_refused(ham_dir, tmp_path):
    storage_url = f"sqlite:///{tmp_path}/other.db"
    settings = SearchSettings.from_config({"space": {"learning_rate": [0.1, 0.2]}, "storage": storage_url, "study_name": "segmenter",
                                           "train_config": SEGMENTER, "output_dir": str(tmp_path), "network": "segmenter",
                                           "best_overlay": str(tmp_path / "o.yaml")})
    open_study(open_storage(storage_url, 1)[0], settings, storage_url)
    error = search_error(tmp_path, ham_dir, search_settings={"storage": storage_url})
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
    ham_search(tmp_path, ham_dir, search_settings={"storage": postgres_url, "study_name": study_name, "n_trials": 1})
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert study.user_attrs["definition"]["space"] == {"learning_rate": {"choices": GRID["learning_rate"]}}
    assert (tmp_path / "search" / "best_hparams_segmenter.yaml").is_file()
