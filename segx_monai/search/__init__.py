"""Hyper-parameter search of the bundles' train configs with Optuna, scored on the validation fold only."""

from segx_monai.search.pruning import OptunaPruningHandler
from segx_monai.search.space import SearchError, SearchSpace
from segx_monai.search.study import SearchSettings, run_search, searching, trial_workflow

__all__ = ["OptunaPruningHandler", "SearchError", "SearchSettings", "SearchSpace", "run_search", "searching", "trial_workflow"]
