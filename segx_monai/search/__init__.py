"""Hyper-parameter search of the bundles' train configs with Optuna, scored on the validation fold only."""

from segx_monai.search.pruning import OptunaPruningHandler
from segx_monai.search.space import SearchError, SearchSpace
from segx_monai.search.study import SearchSettings, run_search, trial_workflow
from segx_monai.search.workflow import SearchWorkflow, search

__all__ = ["OptunaPruningHandler", "SearchError", "SearchSettings", "SearchSpace", "SearchWorkflow", "run_search", "search", "trial_workflow"]
