"""The review threshold calibrated on the validation fold and saved beside the weights (``review_<explainer>.json``),
with the map thresholds of the cheXlocalize-style localisation tuned on the same fold (``segx_monai.handlers.pointing``):
written by :class:`ReviewCalibrationSaver` (the ``calibrating`` workflow), read by :class:`ReviewCalibration`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from ignite.engine import Engine, Events

from segx_monai.bundle.errors import ConfigError
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns
from segx_monai.handlers.writers import item_rows
from segx_monai.metrics.calibration import (
    check_review_goal, choose_review_threshold, fit_combined_score, review_threshold_curve,
)
from segx_monai.utils.staging import write_text_atomic

if TYPE_CHECKING:
    from segx_monai.handlers.pointing import LocalizationThresholdTuner

CALIBRATE_COMMAND = ("python -m monai.bundle run calibrating --config_file "
                     "\"['configs/inference.yaml','configs/interpret.yaml','configs/calibrate.yaml']\"")
CALIBRATED_SCORES = (Columns.CONFIDENCE, *CERTAINTY_SCORES)  # the scores given a threshold: the baseline and SegU's
BY_HAND = "set by hand (--review_threshold)"
NOT_TUNED = "not tuned: run calibrating"  # no localisation thresholds apply to the run


def _finite(values: list[float]) -> list[float | None]:
    """Floats for JSON: a non-finite value (an undefined error rate) as null."""
    return [v if math.isfinite(v) else None for v in values]


def review_calibration(rows: list[dict], goal: str, target: float, settings: Mapping) -> dict:
    """The content of a review file from the validation rows (sample-table columns): per score of
    ``CALIBRATED_SCORES`` the threshold chosen for ``goal``/``target`` with its coverage, error rates and curve; per
    certainty score the combined-score fit on [confidence, score]; the ``settings`` the scores were measured with."""
    used = [row for row in rows if math.isfinite(float(row.get(Columns.CORRECT, math.nan)))]
    if not used:
        raise ValueError(f"review calibration: none of the {len(rows)} validation prediction(s) has an outcome "
                         f"({Columns.CORRECT!r}); the validation fold needs its labels.")
    column = {name: torch.tensor([float(row.get(name, math.nan)) for row in used], dtype=torch.float64)
              for name in (Columns.CORRECT, *CALIBRATED_SCORES)}
    correct = column[Columns.CORRECT] == 1
    content = {"goal": goal, "target": target, "settings": dict(settings), "fold": "validation", "n_cases": len(used),
               "n_errors": int((~correct).sum()), "n_left_out": len(rows) - len(used), "scores": {}, "combined": {}}
    for name in CALIBRATED_SCORES:
        choice, curve = choose_review_threshold(column[name], correct, goal, target), review_threshold_curve(column[name], correct)
        content["scores"][name] = {
            **{key: _finite([value])[0] if isinstance(value, float) else value for key, value in choice._asdict().items()},
            "curve": {key: _finite(getattr(curve, key).tolist())
                      for key in ("thresholds", "coverage", "accepted_error", "flagged_error")},
        }
    for name in CERTAINTY_SCORES:
        features = torch.stack([column[Columns.CONFIDENCE], column[name]], dim=1)
        content["combined"][name] = fit_combined_score(features, correct, [Columns.CONFIDENCE, name])
    return content


class ReviewCalibrationSaver:
    """On the calibration evaluator (validation fold): collects every row, and when the run completes writes
    :func:`review_calibration` of them atomically to ``path``, with the ``localization`` entry of the tuner
    ``localization`` (attached to the same evaluator) when given. ``goal`` and ``target`` are checked at once."""

    def __init__(self, path: str | Path, goal: str, target: float, settings: Mapping,
                 localization: LocalizationThresholdTuner | None = None) -> None:
        check_review_goal(goal, target)
        self.path, self.goal, self.target, self.settings = Path(path), goal, target, settings
        self.localization = localization
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def collect(self, engine: Engine) -> None:
        self.rows += [dict(row) for item in engine.state.output for row in item_rows(item)]

    def save(self, engine: Engine) -> None:
        content = review_calibration(self.rows, self.goal, self.target, self.settings)
        if self.localization is not None:
            content["localization"] = self.localization.result()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(content, indent=1, allow_nan=False))


class ReviewCalibration:
    """The review file at ``path`` as it applies to a run with these ``settings``, ``goal`` and ``target``: a file
    measured with other values does not apply. Read only when asked, so a run given its threshold by hand needs none."""

    def __init__(self, path: str | Path, settings: Mapping, goal: str, target: float) -> None:
        self.path = Path(path)
        self.expected = json.loads(json.dumps({"goal": goal, "target": target, **settings}))  # as JSON reads it back

    def _load(self) -> dict:
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no review calibration; choose the review threshold on the validation fold with "
                f"`{CALIBRATE_COMMAND}` (with this run's settings), or set one by hand with --review_threshold <number>."
            )
        return json.loads(self.path.read_text())

    def mismatch(self, content: Mapping, review: bool = True) -> str | None:
        """Why ``content`` does not apply to this run (the first setting that differs), or None; without ``review``
        the review goal and target are not compared (the maps do not depend on them)."""
        saved = {"goal": content.get("goal"), "target": content.get("target"), **content.get("settings", {})}
        for key, value in self.expected.items():
            if not review and key in ("goal", "target"):
                continue
            if saved.get(key) != value:
                name = f"review_{key}" if key in ("goal", "target") else key
                return (f"{self.path}: calibrated with {name} {saved.get(key)!r}, but this run has {name} {value!r}; "
                        f"calibrate again with this run's settings (`{CALIBRATE_COMMAND}`) or set --review_threshold by hand.")
        return None

    def read(self) -> dict:
        """The file's content; an error naming the file when it is missing or the first setting that differs."""
        content = self._load()
        reason = self.mismatch(content)
        if reason:
            raise ConfigError(reason)
        return content

    def threshold(self, score: str) -> float:
        """The threshold calibrated for certainty ``score``."""
        scores = self.read()["scores"]
        if score not in scores:
            raise KeyError(f"{self.path}: no threshold for certainty_score {score!r}; it has {sorted(scores)}.")
        return float(scores[score]["threshold"])

    def applies(self) -> bool:
        """Whether the file exists and was measured with this run's settings."""
        return self.path.is_file() and self.mismatch(self._load()) is None

    def combined_fit(self, score: str) -> dict | None:
        """The combined-score fit on [confidence, ``score``] when the file applies and it was fitted, else None."""
        fit = self.read()["combined"].get(score) if self.applies() else None
        return fit if fit and fit.get("fitted") else None

    def record(self, score: str, threshold: float) -> dict:
        """Where the run's review ``threshold`` came from, for ``run.json``: the file with its goal, validation counts,
        choice and curve for ``score`` (when the threshold is the calibrated one), or set by hand."""
        content = self.read() if self.applies() else None
        if content is None or score not in content["scores"] or content["scores"][score]["threshold"] != threshold:
            return {"source": BY_HAND, "threshold": threshold}
        fit = content["combined"].get(score, {})
        return {"source": str(self.path), **{key: content[key] for key in ("goal", "target", "fold", "n_cases", "n_errors")},
                "score": score, **content["scores"][score],
                "combined": "fitted" if fit.get("fitted") else fit.get("reason", "no fit stored")}

    def _localization(self) -> tuple[dict | None, str]:
        """The file's ``localization`` entry when it applies to this run's maps, else None and why."""
        if not self.path.is_file():
            return None, f"no review file {self.path}"
        content = self._load()
        reason = self.mismatch(content, review=False)
        if reason is None and "localization" not in content:
            reason = f"{self.path} holds no localisation thresholds (calibrated without a LocalizationThresholdTuner)"
        return (None, reason) if reason else (content["localization"], "")

    def localization_thresholds(self) -> dict[str, dict[str, float | None]] | None:
        """The map thresholds tuned per group on the validation fold, ``{group: {"raw": t, "segx": t}}`` (None for a
        group without a true-positive pair), when the file applies to this run's maps; else None: not tuned."""
        entry, _ = self._localization()
        return None if entry is None else {group: tuned["threshold"] for group, tuned in entry["groups"].items()}

    def localization_record(self) -> dict:
        """Where the run's localisation thresholds came from, for ``run.json``: the file and its validation entry, or
        :data:`NOT_TUNED` and why."""
        entry, reason = self._localization()
        return {"source": NOT_TUNED, "reason": reason} if entry is None else {"source": str(self.path), **entry}
