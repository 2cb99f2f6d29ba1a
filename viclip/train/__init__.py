"""ViCLIP training: DeepSpeed engine, distributed InfoNCE, two-phase recipe, checkpoints, meters."""

from viclip.train.engine import TrainResult, train

__all__ = ["TrainResult", "train"]
