"""The search as a MONAI bundle workflow whose inputs are explicit: its config files and its overrides.

    python -m monai.bundle run_workflow segx_monai.search.SearchWorkflow \\
        --config_file "['configs/inference.yaml','configs/train_segmenter.yaml','configs/search.yaml']" --KEY VALUE ...

MONAI's ``run_workflow`` hands the config files and the ``--KEY VALUE`` pairs to :class:`SearchWorkflow`; from Python,
``search(config_file, {KEY: VALUE})`` does the same. Every trial composes ``search#train_config`` (by default the given
files that set no ``search`` key) with these overrides, less the ``search#...`` ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import ensure_tuple

from segx_monai.bundle.errors import check_overrides
from segx_monai.search.space import SearchError
from segx_monai.search.study import SearchSettings, run_search

# ConfigWorkflow's own arguments (meta_file, logging_file, ...): the rest of the keyword arguments are config overrides
WORKFLOW_ARGS = frozenset(inspect.signature(ConfigWorkflow.__init__).parameters) - {"self", "override"}


def is_search_id(id_: str) -> bool:
    """Whether config id ``id_`` (``search``, ``search#n_trials``, ``search::space``) is one of the search's own settings."""
    return id_.lstrip("+").replace("::", "#").partition("#")[0] == "search"


class SearchWorkflow(ConfigWorkflow):
    """The search of ``config_file`` (the train configs, then search.yaml) with ``override``: ``{config id: value}``.

    ``initialize`` checks the overrides and the ``search`` settings, ``run`` trains the trials and returns the study.
    """

    def __init__(self, config_file: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(config_file, **{"workflow_type": None, **kwargs})
        self.config_files = [str(f) for f in ensure_tuple(config_file)]
        self.overrides = {k: v for k, v in kwargs.items() if k not in WORKFLOW_ARGS}
        if "search" not in self.parser:
            raise SearchError(f"no search settings in {self.config_files}: compose search.yaml after the train configs.")
        if self.parser.get("search#train_config") is None:  # the trials' configs: the given files that set no search key
            self.parser["search#train_config"] = [f for f in self.config_files if not any(is_search_id(k) for k in ConfigParser.load_config_file(f))]
        self.settings: SearchSettings | None = None

    def initialize(self) -> list:
        """Run the config's ``initialize`` (search.yaml's: check_run()), refuse unknown or mistyped overrides (check_run
        sees those of a ``python -m monai.bundle`` command only) and check the ``search`` settings."""
        done = super().initialize()
        check_overrides(self.config_files, self.overrides)
        self.settings = SearchSettings.from_config(self.parser.get_parsed_content("search"))
        return done

    def run(self) -> optuna.Study:
        """Train trials until the study has ``search#n_trials``; write the report and the best values' overlay."""
        if self.settings is None:
            raise RuntimeError("SearchWorkflow.run: call initialize first.")
        return run_search(self.settings, {k: v for k, v in self.overrides.items() if not is_search_id(k)})


def search(config_file: str | Sequence[str], overrides: Mapping[str, Any] | None = None) -> optuna.Study:
    """Run the search of ``config_file`` with ``overrides`` (``{"image_size": 224, "search#n_trials": 4}``) from Python."""
    workflow = SearchWorkflow(config_file, **dict(overrides or {}))
    workflow.initialize()
    study = workflow.run()
    workflow.finalize()
    return study
