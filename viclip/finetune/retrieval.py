"""Fine-tuned video-text retrieval (paper Table 5, settings of Table 9): ``trainer: retrieval``.

The train split is read from the eval tasks' annotation format (a JSON list of ``{"video", "caption"}``,
``caption`` a text or a list, :func:`viclip.data.annotations.load_video_text_annotations`). Each caption
of a video is one training sample; in paragraph mode (DiDeMo, ActivityNet) a video's captions are
joined, in order, into one text, as the eval tasks do. Both towers are trained with pre-training's
symmetric InfoNCE (:class:`viclip.train.loss.ClipLoss`): samples of one video carry its index, so two
captions of one video in a batch are positives of each other, not negatives. The video-text matching
head (a fusion encoder with hard negatives and k_test re-ranking) is not built: ViCLIP stays a dual
encoder here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from viclip.data.annotations import load_video_text_annotations
from viclip.finetune.base import FinetuneTrainer
from viclip.finetune.data import Sample
from viclip.model import ViCLIP, tokenize


def retrieval_samples(annotation: str, video_root: str, paragraph: bool) -> list[Sample]:
    """One sample per caption (per video in paragraph mode); ``group`` is the video's index in the list."""
    records = load_video_text_annotations(annotation, video_root, missing="drop")
    if paragraph:
        return [Sample(r.video, i, text=" ".join(r.captions)) for i, r in enumerate(records)]
    return [Sample(r.video, i, text=c) for i, r in enumerate(records) for c in r.captions]


class RetrievalTrainer(FinetuneTrainer):
    """ViCLIP from ``checkpoint=`` trained on ``finetune.train`` and evaluated on ``finetune.eval.task``;
    the loss and the forward are pre-training's (:meth:`viclip.train.trainer.Trainer.forward_loss`)."""

    def required_paths(self) -> dict[str, bool]:
        return {**super().required_paths(), "finetune.train.annotation": False, "finetune.train.video_root": True}

    def build_model(self) -> ViCLIP:
        return self.pretrained()

    def train_samples(self) -> list[Sample]:
        split = self.cfg.finetune.train
        return retrieval_samples(str(split.annotation), str(split.video_root), bool(split.paragraph))

    def tokenizer(self, model: torch.nn.Module) -> Callable[[list[str]], torch.Tensor]:
        tokenizer = functools.partial(tokenize, context_length=self.model_cfg.context_length)
        tokenizer(["warm-up"])  # builds the BPE tables once here, not in every epoch's forked workers
        return tokenizer
