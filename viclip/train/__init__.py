"""ViCLIP training: the Trainer (DeepSpeed engine, two-phase recipe, resume), distributed InfoNCE, checkpoints."""

from __future__ import annotations

import importlib

from viclip.errors import ConfigError
from viclip.train.trainer import Trainer, TrainResult, train

# config key `trainer` -> the class that runs it; fine-tuning classes are imported only when asked for
TRAINERS = {
    "pretrain": "viclip.train.trainer:Trainer",
    "retrieval": "viclip.finetune.retrieval:RetrievalTrainer",
    "recognition": "viclip.finetune.recognition:RecognitionTrainer",
}


def trainer_class(name: str) -> type[Trainer]:
    """The Trainer subclass that the config's ``trainer`` field names."""
    if name not in TRAINERS:
        raise ConfigError(f"trainer must be one of {', '.join(TRAINERS)}, got {name!r}")
    module, cls = TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TRAINERS", "TrainResult", "Trainer", "train", "trainer_class"]
