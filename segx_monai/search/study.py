"""Optuna study of a bundle's train configs: each trial is a fresh ConfigWorkflow of them, scored on validation.

The objective is the validation key metric's best value (``validate#evaluator.state.best_metric``: val_auroc for the
classifier, val_dice for the segmenter), maximised. Trials read the training and validation folds of the saved split
only; the test fold is left to ``evaluate.yaml``. The study lives in an Optuna RDB storage (SQLite file by default, any
SQLAlchemy URL such as ``postgresql+psycopg2://user:password@host:5432/db``), so re-running the command continues it and
several processes, on one machine or several, can work on it at once. A process killed mid-trial stops sending
heartbeats: after two heartbeat intervals its trial is marked FAIL and queued again with the same values (at once
when the process is interrupted with Ctrl-C).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from monai.bundle import ConfigWorkflow
from monai.utils import ensure_tuple
from optuna.trial import FrozenTrial, TrialState

from segx_monai.search.pruning import OptunaPruningHandler
from segx_monai.search.report import format_params, trial_note, write_report
from segx_monai.search.space import SearchError, SearchSpace

MAX_RETRY = 3  # times a trial whose process died or was interrupted is queued again before it counts as failed


@dataclass
class SearchSettings:
    """``search`` of search.yaml, checked: each error names its key."""

    space: SearchSpace
    sampler: str
    n_trials: int
    seed: int | None
    pruner: optuna.pruners.BasePruner
    network: str
    train_config: list[str]
    output_dir: Path
    storage: str
    study_name: str
    best_overlay: Path
    heartbeat_interval: int
    pinned: dict

    @classmethod
    def from_config(cls, search: Mapping) -> SearchSettings:
        missing = {"space", "storage", "study_name", "train_config", "output_dir", "network", "best_overlay"} - set(search)
        if missing:
            raise SearchError(f"search#{sorted(missing)[0]} is not set (search.yaml defines every search#... key).")
        sampler = search.get("sampler", "grid")
        if sampler not in ("grid", "tpe"):
            raise SearchError(f"search#sampler must be grid or tpe; got {sampler!r}.")
        space = SearchSpace(search["space"], grid=sampler == "grid")
        n_trials = search.get("n_trials")
        if n_trials is None and sampler == "grid":
            n_trials = space.size
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise SearchError(f"search#n_trials must be a positive integer{' (null: the whole grid)' if sampler == 'grid' else ' with the tpe sampler'}; got {n_trials!r}.")
        if sampler == "grid" and n_trials > space.size:
            raise SearchError(f"search#n_trials {n_trials} exceeds the {space.size} points of the grid.")
        train_config = [str(f) for f in ensure_tuple(search["train_config"])]
        absent = [f for f in train_config if not Path(f).is_file()]
        if absent:
            raise SearchError(f"search#train_config: {absent} not found; expected the trials' config files, e.g. "
                              "['configs/inference.yaml', 'configs/train_segmenter.yaml'].")
        heartbeat = search.get("heartbeat_interval", 30)
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
            raise SearchError(f"search#heartbeat_interval must be a whole number of seconds >= 1; got {heartbeat!r}.")
        study_name = search["study_name"]
        if not isinstance(study_name, str) or not study_name:
            raise SearchError(f"search#study_name must be a non-empty string; got {study_name!r}.")
        return cls(
            space=space, sampler=sampler, n_trials=n_trials, seed=search.get("seed"), pruner=_pruner(search.get("pruner", "median")),
            network=str(search["network"]), train_config=train_config, output_dir=Path(search["output_dir"]), storage=str(search["storage"]),
            study_name=study_name, best_overlay=Path(search["best_overlay"]), heartbeat_interval=heartbeat, pinned=dict(search.get("pinned", {})),
        )

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler == "grid":
            return optuna.samplers.GridSampler(self.space.grid(), seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed)

    def definition(self) -> dict:
        """What a study is a search of; stored with it so that a run asking for another search is refused."""
        return {"network": self.network, "sampler": self.sampler, "space": self.space.as_dict()}


def _pruner(value) -> optuna.pruners.BasePruner:
    if isinstance(value, optuna.pruners.BasePruner):
        return value
    if value == "median":
        return optuna.pruners.MedianPruner()
    if value in ("none", None):
        return optuna.pruners.NopPruner()
    raise SearchError(f"search#pruner must be median, none or an Optuna pruner ({{_target_: optuna.pruners.MedianPruner, ...}}); got {value!r}.")


def run_search(settings: SearchSettings, overrides: Mapping) -> optuna.Study:
    """Open or continue the study of ``settings`` and run trials until it has ``n_trials``; then write the report.

    ``overrides``: config ids and values given to every trial on top of ``search#train_config`` (the command's
    ``--KEY VALUE``). Every check (space ids, storage URL, the study's stored space) is done before the first trial trains.
    """
    reserved = {k: "each trial writes to its own folder and starts fresh" for k in _own_folder(settings.output_dir)}
    reserved.update({k: "search#pinned gives every trial this run's value (the data and its saved split)" for k in settings.pinned})
    settings.space.check_ids(trial_workflow(settings, overrides, settings.output_dir, {}).parser, reserved)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial instead of Optuna's own
    storage, shown_url = open_storage(settings.storage, settings.heartbeat_interval)
    study = open_study(storage, settings, shown_url)
    trials_dir = settings.output_dir / settings.study_name
    print(f"[search {settings.study_name}] {settings.sampler} search of {settings.space.names} on the validation fold, "
          f"{settings.n_trials} trials; study in {shown_url}, trials in {trials_dir}", flush=True)
    objective = _Objective(settings, overrides, trials_dir)
    _work(study, objective, settings)
    report = write_report(study, settings, shown_url)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs]
    trained = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "surplus" not in t.user_attrs]
    if failed and not trained:  # a failed trial is kept and the search goes on, but a search whose every trial failed fails
        raise SearchError(f"every trial of study {settings.study_name} failed; trial {failed[-1].number}: {failed[-1].user_attrs['error']} (report: {report})")
    return study


def trial_workflow(settings: SearchSettings, overrides: Mapping, trial_dir: Path, params: Mapping) -> ConfigWorkflow:
    """A fresh train ConfigWorkflow: train configs + ``overrides`` + pinned data + its own folder (not resumed) + ``params``."""
    trial = {**copy.deepcopy(dict(overrides)), **settings.pinned, **_own_folder(trial_dir), **params}
    return ConfigWorkflow(config_file=settings.train_config, workflow_type="train", run_id="training", **trial)


def _own_folder(trial_dir: Path) -> dict:
    """Outputs in the trial's folder, and no resuming: trials never overwrite the bundle's models or each other's runs."""
    return {"bundle_root": str(trial_dir), "output_dir": str(trial_dir), "ckpt_dir": str(trial_dir), "resume": False}


def open_storage(url: str, heartbeat_interval: int) -> tuple[optuna.storages.RDBStorage, str]:
    """Optuna's RDBStorage of ``url`` with heartbeats (a dead process's trial is queued again); its URL minus password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import IntegrityError, OperationalError

    try:
        parsed = make_url(url)
    except Exception as e:
        raise SearchError(f"search#storage {url!r} is not a database URL (e.g. sqlite:////abs/path/study.db, postgresql+psycopg2://user:pw@host/db).") from e
    shown = parsed.render_as_string(hide_password=True)
    connect_args = {}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = 60  # wait for another process's write instead of failing with "database is locked"
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SearchError(f"search#storage {shown}: cannot create its folder ({e}).") from e
    elif parsed.get_driver_name() in ("psycopg2", "psycopg"):
        connect_args["connect_timeout"] = 10
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        url, engine_kwargs={"connect_args": connect_args}, heartbeat_interval=heartbeat_interval,
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                    )
                break
            except (IntegrityError, OperationalError) as e:  # another process creating the same new database's tables
                if attempt == 4 or not (isinstance(e, IntegrityError) or "already exists" in str(e)):
                    raise
                time.sleep(1)
    except Exception as e:  # SQLAlchemy connection errors, a missing database driver, a read-only file
        root = e
        while (root.__cause__ or root.__context__) is not None:
            root = root.__cause__ or root.__context__
        hint = " (install the database driver, e.g. pip install psycopg2-binary for postgresql+psycopg2://...)" if isinstance(root, ImportError) else ""
        raise SearchError(f"search#storage {shown}: cannot open it: {type(root).__name__}: {str(root).strip().splitlines()[0]}{hint}") from e
    return storage, shown


def open_study(storage: optuna.storages.RDBStorage, settings: SearchSettings, shown_url: str) -> optuna.Study:
    """Create the study or load it (``load_if_exists``), refusing one that was created for another search."""
    study = optuna.create_study(storage=storage, study_name=settings.study_name, direction="maximize", load_if_exists=True,
                                sampler=settings.make_sampler(), pruner=settings.pruner)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SearchError(f"study {settings.study_name!r} in {shown_url} minimises; choose another search#study_name.")
    stored, wanted = study.user_attrs.get("definition"), settings.definition()
    if stored is None:
        study.set_user_attr("definition", wanted)
    elif stored != wanted:
        raise SearchError(f"study {settings.study_name!r} in {shown_url} is a search of {stored}, not of {wanted}; "
                          "set another search#study_name (or delete that study) to search a different space.")
    return study


class _Objective:
    """One trial: train the bundle with the trial's values in its own folder; return the best validation key metric."""

    def __init__(self, settings: SearchSettings, overrides: Mapping, trials_dir: Path) -> None:
        self.settings, self.overrides, self.trials_dir = settings, overrides, trials_dir
        self.number = -1  # the trial being run

    def __call__(self, trial: optuna.Trial) -> float:
        self.number = trial.number
        reason = _surplus(trial.study, trial.number, self.settings.n_trials, self.settings.sampler == "grid")
        if reason:
            trial.set_user_attr("surplus", reason)
            raise optuna.TrialPruned(reason)
        try:
            return self._train(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # kept with the trial for the report; Optuna records it as FAIL and goes on
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            trial.set_user_attr("error", f"{type(root).__name__}: {root}"[:500])
            raise

    def _train(self, trial: optuna.Trial) -> float:
        params = self.settings.space.suggest(trial)
        trial_dir = self.trials_dir / f"trial_{trial.number:04d}"
        trial.set_user_attr("trial_dir", str(trial_dir))
        workflow = trial_workflow(self.settings, self.overrides, trial_dir, params)
        workflow.initialize()
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        pruning = OptunaPruningHandler(trial, workflow.parser.get_parsed_content("train#trainer"))
        pruning.attach(evaluator)
        workflow.run()
        state = evaluator.state
        if "metric" not in trial.study.user_attrs:
            trial.study.set_user_attr("metric", state.key_metric_name)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        if state.best_metric_epoch < 1:
            raise RuntimeError(f"no validation epoch gave a {state.key_metric_name} (values: {dict(trial.intermediate_values)}).")
        trial.set_user_attr("best_epoch", state.best_metric_epoch)
        return float(state.best_metric)


def _counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials filling one of the study's n_trials: all but surplus ones and dead-process trials that were queued again."""
    requeued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # RetryHeartbeatStaleTrialCallback's record
    return [t for t in trials if "surplus" not in t.user_attrs and not (t.state == TrialState.FAIL and t.number in requeued)]


def _surplus(study: optuna.Study, number: int, n_trials: int, grid: bool) -> str | None:
    """Why trial ``number`` must not train: the study has its trials, or (grid) an earlier trial holds its grid point.

    Two processes may both start a trial for the last open slot, and Optuna's GridSampler may give two running
    trials one point; the later-numbered trial yields, so no point is trained twice.
    """
    for _ in range(20):
        trials = study.get_trials(deepcopy=False)
        earlier = [t for t in _counted(trials) if t.number < number]
        # an earlier trial may be between its creation and GridSampler's choice of its point (system attr grid_id)
        if not grid or all("grid_id" in t.system_attrs for t in earlier):
            break
        time.sleep(0.5)
    if len(earlier) >= n_trials:
        return f"the study already has its {n_trials} trials"
    if grid:
        point = next(t for t in trials if t.number == number).system_attrs.get("grid_id")
        holder = next((t.number for t in earlier if t.system_attrs.get("grid_id") == point), None)
        if holder is not None:
            return f"grid point taken by trial {holder}"
    return None


def _work(study: optuna.Study, objective: _Objective, settings: SearchSettings) -> None:
    """Run trials one at a time until the study has n_trials finished ones, waiting for those running elsewhere."""
    told_waiting = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead process's trial: FAIL, and queued again as WAITING
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        if TrialState.WAITING in states or len(_counted(trials)) < settings.n_trials:
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_progress(settings)], gc_after_trial=True)
            except KeyboardInterrupt:  # Optuna has marked the trial FAIL: queue it again, as for a process that died
                interrupted = study.get_trials(deepcopy=False)[objective.number]
                if interrupted.state == TrialState.FAIL:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, interrupted)
                raise
        elif TrialState.RUNNING in states:
            if not told_waiting:
                running = [t.number for t in trials if t.state == TrialState.RUNNING]
                print(f"[search {settings.study_name}] waiting for trial(s) {running} running in other processes (a trial "
                      f"whose process died is queued again after {2 * settings.heartbeat_interval} s without heartbeat)", flush=True)
                told_waiting = True
            time.sleep(settings.heartbeat_interval)
        else:
            return


def _progress(settings: SearchSettings):
    """Optuna callback printing one line per finished trial."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state.is_finished() for t in _counted(trials))
        metric = study.user_attrs.get("metric", "value")
        outcome = f"{metric} {trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial_note(trial, trials)
        best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, default=None)
        best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        print(f"[search {study.study_name}] trial {trial.number} {trial.state.name} {outcome} | {format_params(trial.params)} | "
              f"{seconds:.0f} s | {best_text} | {done}/{settings.n_trials} done", flush=True)

    return callback
