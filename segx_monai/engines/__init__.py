"""MONAI engines this package adds: the counterfactual generator's training against a frozen classifier."""

from segx_monai.engines.counterfactual import (
    CounterfactualLoss, CounterfactualOutcome, CounterfactualTrainer, CounterfactualValidity, outcome_probabilities,
)

__all__ = ["CounterfactualLoss", "CounterfactualOutcome", "CounterfactualTrainer", "CounterfactualValidity", "outcome_probabilities"]
