"""ViCLIP training: the Trainer (DeepSpeed engine, two-phase recipe, resume), distributed InfoNCE, checkpoints."""

from viclip.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
