"""UMT's recognition augmentations (VideoMAE's ``Kinetics`` training transform), through timm.

Per video, on the loader: RandAugment (``--aa rand-m7-n4-mstd0.5-inc1``, timm's
``rand_augment_transform`` with VideoMAE's hparams: translate 45 % of the 224 input, bicubic) on the
decoded frames before the crop, the SAME ops and magnitudes on every frame of a clip (VideoMAE's
video RandAugment; timm's draws each call anew, so :class:`ClipRandAugment` replays one draw per
frame); then the crop and flip of :class:`viclip.data.transforms.VideoTransform`. On the device, after
normalisation: random erasing (``--reprob 0.25``, pixel mode, one box), timm's ``RandomErasing`` called
on a clip's ``[T, 3, H, W]`` as VideoMAE does, which treats the frames as a batch: each frame draws its
own box. Repeated augmentation (``--num_sample 2``) is the loader's ``repeats``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing


@contextlib.contextmanager
def _global_rngs(seed: int) -> Iterator[None]:
    """``random`` and ``np.random`` seeded by ``seed`` inside (timm's ops draw from them), restored after."""
    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


class ClipRandAugment:
    """timm's RandAugment with one draw per clip: uint8 ``[T, H, W, 3]`` -> uint8 ``[T, H, W, 3]``."""

    def __init__(self, config: str = "rand-m7-n4-mstd0.5-inc1", input_size: int = 224) -> None:
        hparams = {"translate_const": int(input_size * 0.45), "interpolation": Image.BICUBIC}
        self.transform = rand_augment_transform(config, hparams)

    def __call__(self, frames: torch.Tensor, seed: int) -> torch.Tensor:
        out = []
        with _global_rngs(seed):
            state = random.getstate(), np.random.get_state()
            for frame in frames.numpy():
                random.setstate(state[0])  # every frame replays the clip's draw: the same ops and magnitudes
                np.random.set_state(state[1])
                out.append(np.asarray(self.transform(Image.fromarray(frame))))
        return torch.from_numpy(np.stack(out))


class ClipErasing:
    """timm's RandomErasing on normalised clips ``[B, T, 3, H, W]`` (in place), per clip as VideoMAE."""

    def __init__(self, probability: float = 0.25) -> None:
        self.probability = probability

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        # UMT's --remode pixel --recount 1; a clip's frames are timm's batch, each with its own box (no split kept)
        erase = RandomErasing(self.probability, mode="pixel", max_count=1, num_splits=1, device=str(video.device))
        for clip in video:
            erase(clip)
        return video
