"""Runs killed at awkward moments leave complete results only, and one run at a time writes a bundle output: best
model and resume points written beside the old file and renamed, the previous resume point kept until the next is
whole, interpretation staged and swapped, a lock naming its holder; kills are SIGKILL of real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from conftest import HAM_CONFIGS, REPO, ham_workflow, run_workflow
from segx_monai.handlers.checkpoint import BestModelSaver, ResumableCheckpoint, epoch_checkpoints, latest_epoch_checkpoint
from segx_monai.utils.files import sha256_file
from segx_monai.utils.lock import RunLock, RunLockedError
from segx_monai.utils.staging import StagedDirectory

TINY_ARGS = ["--image_size", "32", "--num_workers", "0"]  # and, for a training, --batch_size 8


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@contextmanager
def logged(*names: str):
    """The records of the named loggers (a handler on each: a bundle's logging.conf replaces the root's handlers)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def wait_for(condition, process: subprocess.Popen, timeout: float = 400, poll: float = 0.005) -> None:
    """Poll ``condition`` until true; fail if ``process`` ends first or time runs out."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended (exit {process.returncode}) before the moment to kill it"
        assert time.time() < deadline, "timed out waiting for the moment to kill the process"
        time.sleep(poll)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def bundle_run(workflow: str, configs: list[str], bundle_root: Path, dataset_dir: Path, *args: str, log: Path) -> subprocess.Popen:
    """``python -m monai.bundle run <workflow>`` of the HAM bundle, in its own session (killed as a group)."""
    config_file = str([str(HAM_CONFIGS / c) for c in configs]) if len(configs) > 1 else str(HAM_CONFIGS / configs[0])
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config_file, "--bundle_root", str(bundle_root),
               "--dataset_dir", str(dataset_dir), *TINY_ARGS, *(["--batch_size", "8"] if workflow == "training" else []), *args]
    return subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def partial_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".partial") or p.name.startswith("tmp"))


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (MONAI wraps an expression's error in its own RuntimeError)."""
    found = []
    while error is not None:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


# ---- the savers, killed in the middle of writing large states

SAVING_CHILD = textwrap.dedent("""
    import sys, torch
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint
    from segx_monai.handlers import checkpoint
    folder, resume_saver = sys.argv[1], getattr(checkpoint, sys.argv[2])
    state = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(6_000_000))})  # 24 MB a file
    best = Checkpoint({"model": state}, checkpoint.AtomicDiskSaver(folder, filename="classifier.pt"), score_function=lambda e: e.state.epoch, n_saved=1)
    engine = Engine(lambda e, b: None)
    resume = Checkpoint({"model": state, "trainer": engine}, resume_saver(folder), filename_prefix="resume", n_saved=1,
                        global_step_transform=lambda e, _: e.state.epoch)
    @engine.on(Events.EPOCH_COMPLETED)
    def save(e):
        state["w"].data.fill_(e.state.epoch)
        best(e)
        resume(e)
    engine.run([0], max_epochs=100_000)
""")


@pytest.mark.parametrize("resume_saver", ["AtomicDiskSaver", "BackgroundDiskSaver"])
def test_saves_killed_mid_write_keep_a_complete_best_model_and_resume_point(tmp_path, resume_saver):
    """SIGKILL while the best model, then while a resume point, is half-written: the file under the real name is the
    previous complete one (Ignite/MONAI deleted it first, or wrote it in place), and a resume point is left. Written
    in the background, the resume point is the state of its own epoch, though the next epoch changes it meanwhile."""
    log = tmp_path / "child.log"
    for round_, target in enumerate(["classifier.pt", "resume_checkpoint", "classifier.pt", "resume_checkpoint"]):
        child = subprocess.Popen([sys.executable, "-c", SAVING_CHILD, str(tmp_path), resume_saver], cwd=REPO, stdout=log.open("w"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:  # a round starts once the previous complete files are there, then waits for a half-written target
            wait_for(lambda: (tmp_path / "classifier.pt").exists() and latest_epoch_checkpoint(tmp_path) is not None, child, timeout=120)
            wait_for(lambda: any(p.name.startswith(f".{target}") for p in partial_files(tmp_path)), child, timeout=120)
        finally:
            kill(child)
        best = torch.load(tmp_path / "classifier.pt", weights_only=True)
        assert best["w"].min() == best["w"].max() >= 1, f"round {round_}: classifier.pt is not one whole saved state"
        (resume,) = epoch_checkpoints(tmp_path)[:1]
        saved = torch.load(resume, weights_only=True)
        assert saved["model"]["w"].min() == saved["model"]["w"].max() == saved["trainer"]["iteration"] == int(resume.stem.rsplit("_", 1)[1])
        assert partial_files(tmp_path), "the kill did not land during a write"
        for leftover in partial_files(tmp_path):  # as a training run cleans them at start
            leftover.unlink()


def test_a_resume_point_that_does_not_load_is_reported_and_the_previous_one_used(tmp_path):
    net = torch.nn.Linear(3, 2)
    trainer = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": net}).attach(trainer)
    trainer.run([0], max_epochs=2)
    assert [p.name for p in epoch_checkpoints(tmp_path)] == ["resume_checkpoint_2.pt"]
    (tmp_path / "resume_checkpoint_1.pt").write_bytes((tmp_path / "resume_checkpoint_2.pt").read_bytes())
    (tmp_path / "resume_checkpoint_3.pt").write_bytes((tmp_path / "resume_checkpoint_2.pt").read_bytes()[:300])  # truncated
    (tmp_path / "tmpab12cd_3").write_bytes(b"left by Ignite's own atomic saver")
    resumed = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": torch.nn.Linear(3, 2)}).attach(resumed)
    epochs = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    with logged("segx_monai.handlers.checkpoint") as records:
        resumed.run([0], max_epochs=3)
    assert "resume_checkpoint_3.pt does not load" in records.text and "tmpab12cd_3" in records.text
    assert epochs == [3]  # from the complete epoch-2 point, not from the start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume_checkpoint_3.pt"]


def _evaluator_with_best_saver(folder: Path, net: torch.nn.Module) -> tuple[Engine, BestModelSaver]:
    evaluator = Engine(lambda e, b: None)
    evaluator.state.key_metric_name = "val_auroc"
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_auroc=0.5 + 0.1 * e.state.epoch))
    saver = BestModelSaver(str(folder), {"model": net}, save_key_metric=True, key_metric_filename="classifier.pt")
    saver.attach(evaluator)
    return evaluator, saver


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_resume_checks_the_best_model_and_names_its_true_epoch(tmp_path, damage):
    """The resume state records the best model's epoch, value and hash; a file that does not load, or that was written
    after the resume point (a kill between the two saves), is reported and no longer called the best."""
    net = torch.nn.Linear(3, 2)
    evaluator, saver = _evaluator_with_best_saver(tmp_path, net)
    evaluator.run([0], max_epochs=2)
    state = saver.state_dict()
    assert (state["epoch"], state["metric"], state["sha256"]) == (2, pytest.approx(0.7), sha256_file(tmp_path / "classifier.pt"))

    evaluator, fresh = _evaluator_with_best_saver(tmp_path, torch.nn.Linear(3, 2))
    with logged("segx_monai.handlers.checkpoint") as records:
        fresh.load_state_dict(state)
    assert "epoch 2, val_auroc 0.7" in records.text and "checked to load" in records.text
    assert (evaluator.state.best_metric_epoch, evaluator.state.best_metric) == (2, pytest.approx(0.7))

    path = tmp_path / "classifier.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save({"weight": torch.zeros(2, 3)}, path)
    evaluator, fresh = _evaluator_with_best_saver(tmp_path, torch.nn.Linear(3, 2))
    with logged("segx_monai.handlers.checkpoint") as records:
        fresh.load_state_dict(state)
    assert ("does not load" if damage == "truncated" else "not the file the resume point records") in records.text
    assert "record is dropped" in records.text
    assert evaluator.state.best_metric_epoch == -1 and fresh.state_dict().get("epoch") is None


# ---- the lock

HOLDING_CHILD = "import sys, time; from segx_monai.utils.lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def test_a_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "runs" / "classifier.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDING_CHILD, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"PID {holder.pid} on .*segx_monai.utils.lock import RunLock"):
            RunLock(path).acquire()
    finally:
        kill(holder)
    with logged("segx_monai.utils.lock") as records, RunLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"left by PID {holder.pid}" in records.text and "no longer running" in records.text
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_a_lock_whose_pid_now_runs_another_program_is_stale(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "argv": ["some", "other", "program"], "command": "x"}))
    with RunLock(path):
        assert json.loads(path.read_text())["argv"] != ["some", "other", "program"]


# ---- stage and swap

def test_staged_output_swaps_only_when_complete_and_repairs_a_killed_swap(tmp_path):
    out = tmp_path / "gradcam_rethreshold"
    (out / "maps").mkdir(parents=True)
    (out / "report.html").write_text("old")
    staged = StagedDirectory(out)
    with pytest.raises(ValueError), staged:
        Path(staged.staging, "report.html").write_text("new, unfinished")
        raise ValueError("the run fails half-way")
    assert (out / "report.html").read_text() == "old" and not Path(staged.staging).exists()
    assert (tmp_path / ".gradcam_rethreshold.failed" / "report.html").read_text() == "new, unfinished"  # kept aside
    # killed between moving the old folder aside and renaming the new one in: the old one comes back
    os.replace(out, tmp_path / ".gradcam_rethreshold.old")
    Path(staged.staging).mkdir()
    with logged("segx_monai.utils.staging") as records, staged:
        assert (out / "report.html").read_text() == "old" and list(Path(staged.staging).iterdir()) == []
        Path(staged.staging, "report.html").write_text("new")
    assert "Restoring" in records.text and "unfinished output" in records.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gradcam_rethreshold.failed", "gradcam_rethreshold"]
    assert (out / "report.html").read_text() == "new"


class _Unsaveable(torch.nn.Linear):
    """A module whose state cannot be pickled from ``fail_at`` on (a full disk, say, in the writer's thread)."""

    fail_at = 2

    def __init__(self, engine: Engine) -> None:
        super().__init__(3, 2)
        self.engine = [engine]

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.engine[0].state.epoch >= self.fail_at:
            state["unsaveable"] = lambda: None
        return state


def test_a_resume_point_that_fails_to_write_in_the_background_fails_the_run_and_keeps_the_previous_one(tmp_path):
    trainer = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": _Unsaveable(trainer)}).attach(trainer)
    with pytest.raises(AttributeError, match="pickle"):
        trainer.run([0], max_epochs=3)
    assert trainer.state.epoch == 3  # epoch 2's write failed meanwhile: raised when epoch 3's point is to be saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resume_checkpoint_1.pt"]  # no partial file, the last good kept
    assert torch.load(tmp_path / "resume_checkpoint_1.pt", weights_only=True)["trainer"]["iteration"] == 1  # one per epoch


# ---- the bundle workflows

def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_training_killed_while_saving_is_refused_twice_and_resumes_from_its_last_complete_epoch(ham_dir, tmp_path):
    """A training SIGKILLed while writing a resume point: meanwhile a second training on the bundle was refused; the
    restart takes over the dead run's lock, resumes after the last complete epoch, and its best model is the one
    its resume state records."""
    checkpoints, lock = tmp_path / "runs" / "classifier" / "checkpoints", tmp_path / "runs" / "classifier.lock"
    child = bundle_run("training", ["inference.yaml", "train_classifier.yaml"], tmp_path, ham_dir, "--max_epochs", "4", log=tmp_path / "first.log")
    try:
        wait_for(lock.exists, child, poll=0.05)
        with pytest.raises(Exception) as refused:
            run_workflow(ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_classifier.yaml"], max_epochs=4))
        (error,) = [e for e in chain(refused.value) if isinstance(e, RunLockedError)]
        assert f"PID {child.pid}" in str(error) and "monai.bundle run training" in str(error)
        # the moment a resume point after the first is half-written
        wait_for(lambda: any(p.name.startswith(".resume_checkpoint_") and not p.name.startswith(".resume_checkpoint_1.")
                             for p in partial_files(checkpoints)), child)
    finally:
        kill(child)
    killed_at = int(latest_epoch_checkpoint(checkpoints).stem.rsplit("_", 1)[1])
    assert killed_at >= 1 and torch.load(latest_epoch_checkpoint(checkpoints), weights_only=True)["trainer"]["iteration"] > 0
    assert lock.exists() and partial_files(tmp_path)

    workflow = ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_classifier.yaml"], max_epochs=killed_at + 1)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    with logged("segx_monai.handlers.checkpoint", "segx_monai.utils.lock") as records:
        workflow.run()
        workflow.finalize()
    assert epochs == [killed_at + 1]
    assert f"left by PID {child.pid}" in records.text and "unfinished file" in records.text
    assert partial_files(tmp_path) == [] and not lock.exists()
    assert [p.name for p in epoch_checkpoints(checkpoints)] == [f"resume_checkpoint_{killed_at + 1}.pt"]
    record = torch.load(latest_epoch_checkpoint(checkpoints), weights_only=True)["key_metric_tracking"]
    best = tmp_path / "models" / "model.pt"
    torch.load(best, weights_only=True)
    assert sha256_file(best) == record["sha256"]
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert (evaluator.state.best_metric_epoch, evaluator.state.best_metric) == (record["epoch"], pytest.approx(record["metric"]))


@pytest.mark.slow
def test_interpretation_killed_midway_leaves_the_previous_complete_folder(trained_ham_bundle, ham_dir, tmp_path):
    out = tmp_path / "interpret"
    overrides = {"interpret_dir": str(out), "inference_batch_size": 1}
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, ["inference.yaml", "interpret.yaml"], **overrides))
    before = _tree(out)
    assert {"report.html", "samples.csv", "run.json"} <= set(before)
    staging = tmp_path / ".interpret.partial"
    child = bundle_run("interpreting", ["inference.yaml", "interpret.yaml"], trained_ham_bundle, ham_dir,
                       "--interpret_dir", str(out), "--inference_batch_size", "1", "--segx_variant", "intersect", log=tmp_path / "killed.log")
    try:  # killed once new maps (other SegX maps: another variant) exist
        wait_for(lambda: (staging / "maps").is_dir() and any((staging / "maps").iterdir()), child)
    finally:
        kill(child)
    assert _tree(out) == before
    with logged("segx_monai.utils.staging", "segx_monai.utils.lock") as records:
        run_workflow(ham_workflow(trained_ham_bundle, ham_dir, ["inference.yaml", "interpret.yaml"], **overrides))
    assert "unfinished output" in records.text and f"left by PID {child.pid}" in records.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interpret", "killed.log"]
    assert set(_tree(out)) == set(before)


def test_resume_point_missing_a_part_is_refused_naming_it(tmp_path):
    net, selection = torch.nn.Linear(2, 2), torch.nn.Linear(1, 1)
    torch.save({"model": net.state_dict()}, tmp_path / "resume_checkpoint_1.pt")  # an older version's resume point
    engine = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": net, "model_selection": selection}).attach(engine)
    with pytest.raises(ValueError, match=r"resume_checkpoint_1\.pt: this resume point has no model_selection, trainer.*--resume False"):
        engine.run([0], max_epochs=1)


def _take_held_lock(local_rank: int, path: str, results: str) -> None:
    """One rank of a 2-process gloo run: try the lock another process holds, record what this rank raised."""
    try:
        RunLock(path).acquire()
        outcome = "taken"
    except RunLockedError as e:
        outcome = str(e)
    Path(results, f"rank{local_rank}.txt").write_text(outcome)


def test_a_refused_lock_ends_every_rank_of_a_distributed_run(tmp_path):
    import ignite.distributed as idist

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "run.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "argv": None, "command": "sleep",
                                    "started": "now", "token": "x"}))
        with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
            parallel.run(_take_held_lock, str(lock), str(tmp_path))
    finally:
        holder.kill()
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes[0] == outcomes[1] and f"PID {holder.pid}" in outcomes[0], outcomes


def test_a_best_model_saver_removes_only_its_own_unfinished_files(tmp_path):
    others = [tmp_path / ".segmenter.pt.abc.partial", tmp_path / ".thresholds.json.1.partial"]
    own = tmp_path / ".classifier.pt.def.partial"
    for path in [*others, own]:
        path.write_bytes(b"half")
    engine, _ = _evaluator_with_best_saver(tmp_path, torch.nn.Linear(2, 2))
    engine.run([0], max_epochs=1)
    assert not own.exists() and all(p.exists() for p in others)


def test_a_training_is_refused_while_another_output_writes_its_model(tmp_path, ham_dir):
    """Another run (e.g. MONAI Label's fine-tuning, its own output_dir) writing the same models/segmenter.pt."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "models" / "segmenter.pt.lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "argv": None,
                                    "command": "fine-tuning", "started": "now", "token": "x"}))
        workflow = ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_segmenter.yaml"])
        workflow.initialize()
        with pytest.raises(Exception) as info:
            workflow.run()
        refusals = [str(e) for e in chain(info.value) if isinstance(e, RunLockedError)]
        assert refusals and f"segmenter.pt.lock: another run writes this output: PID {holder.pid}" in refusals[0], info.value
    finally:
        holder.kill()
    assert not (tmp_path / "models" / "segmenter.pt").exists()
