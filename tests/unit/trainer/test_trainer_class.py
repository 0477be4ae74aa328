"""trainer_class: one named subclass of TRL's trainer class; the test faults' wrapper sits
beneath it only when a test set faults (the product path has none)."""

from __future__ import annotations

import torch

from ftapi.v1alpha1.scheduling import StallDetection
from fttrainer.supervision.divergence import LossWatch
from fttrainer.supervision.faults import Faults
from fttrainer.supervision.ranks import ComputeTimer
from fttrainer.supervision.watchdog import Watchdog
from fttrainer.trainer_class import FineTuneTrainer, TrainerHooks, trainer_class


class SFTTrainer:
    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1)


def _hooks() -> TrainerHooks:
    watchdog = Watchdog(StallDetection(enabled=False))
    return TrainerHooks(watchdog=watchdog, loss_watch=LossWatch(), compute_timer=ComputeTimer())


def test_the_trainer_class_is_one_named_subclass_without_faults() -> None:
    built = trainer_class(SFTTrainer, _hooks(), Faults())
    assert built.__name__ == "FineTuneSFTTrainer"
    assert built.__mro__[1:] == (FineTuneTrainer, SFTTrainer, object)
    trainer = built()
    assert len(trainer.model._forward_pre_hooks) == 1  # the compute timer's, no fault's


def test_test_faults_wrap_the_base_beneath_it_only_when_set() -> None:
    built = trainer_class(SFTTrainer, _hooks(), Faults(nan_steps=frozenset({2})))
    assert built.__mro__[1] is FineTuneTrainer
    assert built.__mro__[2] not in (SFTTrainer, object)  # the faults' subclass of it
    assert issubclass(built, SFTTrainer)
