"""Training through a DMoE layer: the built-in tasks, the trainer's model, and its step.

The simulator's trainers (``hivemind_sim.scenario.run.training``) and a real peer's
(``hivemind-core train`` and ``peer``) use these same pieces, so a scenario's training and a
deployed one compute the same thing.
"""

from .model import STEP_FAILURES, Replica, TrainerModel, attach_mixtures, make_mixture, make_optimizer
from .tasks import DATASETS, Dataset, make_dataset
from .trainer import Trainer, TrainingConfig, TrainingStats

__all__ = [
    "DATASETS",
    "STEP_FAILURES",
    "Dataset",
    "Replica",
    "Trainer",
    "TrainerModel",
    "TrainingConfig",
    "TrainingStats",
    "attach_mixtures",
    "make_dataset",
    "make_mixture",
    "make_optimizer",
]
