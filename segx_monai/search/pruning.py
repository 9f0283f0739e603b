"""Ignite handler that reports each validation's key metric to an Optuna trial and stops the trial when pruned."""

from __future__ import annotations

import optuna
from ignite.engine import Engine, Events


class OptunaPruningHandler:
    """Attach to the validation evaluator: ``trial.report(key metric, epoch)``, and on ``trial.should_prune()`` stop.

    The trainer is terminated rather than ``optuna.TrialPruned`` raised inside Ignite, where MONAI's StatsHandler would
    log it as an error twice; the objective raises ``optuna.TrialPruned`` once the trainer returns with ``pruned_at`` set.
    The last epoch is reported but never pruned: the trial has finished, and its score is as complete as any other's.
    """

    def __init__(self, trial: optuna.Trial, trainer: Engine) -> None:
        self.trial, self.trainer, self.pruned_at = trial, trainer, None

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        epoch = evaluator.state.epoch  # MONAI's evaluator runs as epoch `trainer epoch`
        self.trial.report(float(evaluator.state.metrics[evaluator.state.key_metric_name]), epoch)
        if epoch < self.trainer.state.max_epochs and self.trial.should_prune():
            self.pruned_at = epoch
            self.trainer.terminate()
