"""The search's outputs: trials table (CSV and printed), Optuna plots, the best trial's validation curve, the overlay."""

from __future__ import annotations

import csv
import datetime
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from segx_monai.search.study import SearchSettings


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_note(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """Why a trial did not complete: surplus, pruned at which epoch, its error, or its process stopped."""
    if trial.state == TrialState.COMPLETE:
        return f"best epoch {trial.user_attrs.get('best_epoch', '?')}"
    if "surplus" in trial.user_attrs:
        return f"not trained: {trial.user_attrs['surplus']}"
    if trial.state == TrialState.PRUNED:
        return f"pruned after epoch {max(trial.intermediate_values, default=0)}"
    if "error" in trial.user_attrs:
        return trial.user_attrs["error"]
    if trial.state == TrialState.FAIL:
        retry = next((t.number for t in trials if trial.number in t.system_attrs.get("retry_history", [])), None)
        return "stopped with its process (killed or interrupted)" + (f"; queued again as trial {retry}" if retry is not None else "")
    return trial.state.name.lower()


def write_report(study: optuna.Study, settings: SearchSettings, shown_url: str) -> Path:
    """Write ``<output_dir>/<study>/report/`` and, when a trial completed, the best trial's config overlay."""
    report_dir = settings.output_dir / study.study_name / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get("metric", "value")
    names = settings.space.names
    header = ["trial", "state", metric, *names, "epochs", "seconds", "note", "trial_dir"]
    rows = [[t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}", *(t.params.get(n, "") for n in names),
             len(t.intermediate_values), f"{t.duration.total_seconds():.0f}" if t.duration else "", trial_note(t, trials),
             t.user_attrs.get("trial_dir", "")] for t in trials]
    with open(report_dir / "trials.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    print(f"\nstudy {study.study_name!r} ({shown_url}):\n{_table(header[:-1], [r[:-1] for r in rows])}", flush=True)

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        print(f"no complete trial yet: no best values to export. Report: {report_dir}", flush=True)
        return report_dir
    best = study.best_trial
    _plots(study, complete, names, metric, report_dir)
    curve = sorted(best.intermediate_values.items())
    with open(report_dir / "best_validation_curve.csv", "w", newline="") as f:
        csv.writer(f).writerows([["epoch", metric], *curve])
    ax = _pyplot().subplots(figsize=(6, 4))[1]
    ax.plot(*zip(*curve), marker="o")
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"trial {best.number} (best)")
    _save(ax, report_dir / "best_validation_curve.png")
    write_overlay(settings.best_overlay, best, study.study_name, shown_url, metric, settings.train_config)
    print(f"best: trial {best.number}, {metric} {best.value:.4f}, {format_params(best.params)}\n"
          f"overlay: {settings.best_overlay}\nreport: {report_dir}", flush=True)
    return report_dir


def write_overlay(path: Path, best: FrozenTrial, study_name: str, shown_url: str, metric: str, train_config: list[str]) -> Path:
    """The best trial's values as a config file composed after the train configs (a comment header says from where)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Best hyper-parameters of study {study_name!r} ({shown_url}), trial {best.number}: validation {metric} "
              f"{best.value:.6g}.\n# Written {datetime.datetime.now().isoformat(timespec='seconds')}. Train with them by composing "
              f"this file after the train configs, with the search's\n# other overrides (--bundle_root, --dataset_dir, ...):\n"
              f"#   python -m monai.bundle run training --config_file \"{[*train_config, str(path)]}\"\n")
    path.write_text(header + yaml.safe_dump(dict(best.params), sort_keys=False))
    return path


def _plots(study: optuna.Study, complete: list[FrozenTrial], names: list[str], metric: str, report_dir: Path) -> None:
    """Optimisation history and, when at least two complete trials differ in a value, parameter importance (fANOVA)."""
    _pyplot()
    from optuna.visualization import matplotlib as optuna_plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save(optuna_plt.plot_optimization_history(study, target_name=metric), report_dir / "optimization_history.png")
    varying = [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]
    note = report_dir / "param_importances.txt"
    if len(complete) < 2 or not varying:
        note.write_text(f"no parameter importance: it needs two complete trials with different values; {len(complete)} complete, "
                        f"varying: {varying or 'none'}.\n")
        return
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
    except RuntimeError as e:  # e.g. every complete trial has the same value: zero variance to share out
        note.write_text(f"no parameter importance: {e}\n")
        return
    note.write_text("".join(f"{k}\t{v:.4f}\n" for k, v in importances.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _save(optuna_plt.plot_param_importances(study, evaluator=evaluator, params=varying, target_name=metric), report_dir / "param_importances.png")


def _pyplot():
    """pyplot on the file-only Agg backend (the report is written on servers without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(ax, path: Path) -> None:
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")  # keeps Optuna's outside legend
    _pyplot().close(ax.figure)


def _table(header: list, rows: list[list]) -> str:
    rows = [[f"{c:.6g}" if isinstance(c, float) else c for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows])
