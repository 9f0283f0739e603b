"""The search space: config ids of the train config mapped to a grid list or a ``{low, high, log, step}`` range."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import optuna


class SearchError(ValueError):
    """A search setting that cannot work; raised before any training starts, naming the key, URL or study."""


@dataclass(frozen=True)
class Param:
    """One searched config id: ``choices`` (a grid list) or a ``low``-``high`` range, log-scaled and stepped on request."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial):
        """The trial's value: categorical for a list, integer for an integer range, float otherwise."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def as_dict(self) -> dict:
        """JSON-able form, stored with the study to recognise a run that asks for another space."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


class SearchSpace:
    """Parsed and checked ``search#space``; ``grid=True`` (the grid sampler) accepts lists only."""

    def __init__(self, space: Mapping, grid: bool) -> None:
        if not isinstance(space, Mapping) or not space:
            raise SearchError(f"search#space must map config ids to a grid list or a {{low, high, log}} range; got {space!r}.")
        self.params = [_param(str(name), spec, grid) for name, spec in space.items()]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list]:
        """The ``search_space`` argument of Optuna's ``GridSampler``."""
        return {p.name: list(p.choices) for p in self.params}

    @property
    def size(self) -> int:
        """Number of grid points (grid sampler only)."""
        return prod(len(p.choices) for p in self.params)

    def suggest(self, trial: optuna.Trial) -> dict:
        """The trial's value of every searched config id."""
        return {p.name: p.suggest(trial) for p in self.params}

    def as_dict(self) -> dict:
        return {p.name: p.as_dict() for p in self.params}

    def check_ids(self, parser, reserved: Mapping[str, str]) -> None:
        """Every searched id must exist in the train config's ``parser`` and not be one the search sets itself."""
        unknown = [name for name in self.names if name not in parser]
        if unknown:
            raise SearchError(f"search#space: {unknown} not found in the train config; searchable ids are config ids such as "
                              "learning_rate, batch_size, weight_decay, aug_prob or train#dataloader#num_workers.")
        taken = {name: reserved[name] for name in self.names if name in reserved}
        if taken:
            raise SearchError(f"search#space: {sorted(taken)} cannot be searched: {'; '.join(sorted(set(taken.values())))}.")


def _param(name: str, spec, grid: bool) -> Param:
    key = f"search#space#{name}"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SearchError(f"{key}: empty grid list; give at least one value.")
        for value in spec:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise SearchError(f"{key}: grid values must be numbers, strings, booleans or null; got {value!r}.")
            if isinstance(value, str) and _is_number(value):
                raise SearchError(f"{key}: {value!r} is text; write it as a number (YAML reads 1e-5 as text, 1.0e-5 as a number).")
        if len(set(map(repr, spec))) != len(spec):
            raise SearchError(f"{key}: grid list {list(spec)} repeats a value.")
        return Param(name, choices=tuple(spec))
    if isinstance(spec, Mapping):
        if grid:
            raise SearchError(f"{key}: the grid sampler needs a list of values, not a range {dict(spec)}; use search#sampler tpe for ranges.")
        extra = set(spec) - {"low", "high", "log", "step"}
        if extra or not {"low", "high"} <= set(spec):
            raise SearchError(f"{key}: a range is {{low, high, log (optional), step (optional)}}; got {dict(spec)}.")
        low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
        for label, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SearchError(f"{key}#{label}: {value!r} is not a number.")
        if low > high:
            raise SearchError(f"{key}: low {low} > high {high}.")
        if log and low <= 0:
            raise SearchError(f"{key}: a log range needs low > 0; got {low}.")
        if log and step is not None:
            raise SearchError(f"{key}: give either log or step, not both.")
        return Param(name, low=low, high=high, log=log, step=step)
    raise SearchError(f"{key}: expected a grid list or a {{low, high, log}} range; got {spec!r}.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
