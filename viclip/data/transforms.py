"""The official ViCLIP clip transforms, applied to uint8 frames with one random draw per clip.

Training: RandomResizedCrop(scale (0.5, 1.0), bicubic) + horizontal flip, the same crop and flip for
every frame of a clip (a per-frame crop would turn into fake motion); evaluation: resize to a square,
bicubic. Both end with ``/255`` and mean/std normalisation (ImageNet by default, as released).

Resizes are not antialiased by default: the official pipeline resizes uint8 tensors with torchvision 0.15,
whose tensor default is ``antialias=False`` (a plain bicubic kernel, which aliases when it shrinks a frame
by more than 2x). ``antialias=True`` filters first, as PIL does; it moves the embeddings of real footage
(the cosine measured in docs/fidelity.md), so the released models' numbers need the official setting.

With ``normalize=False`` the transform stops at uint8 and :meth:`VideoTransform.normalize` finishes
the job wherever the batch lands: the training stream works that way, because a float32 batch is 4x
the bytes through shared memory, pinned memory and PCIe, and writing it cost the loader a third of
its CPU time (bench/data_loader.py); on the GPU the normalisation is free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_resized_crop_params(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's RandomResizedCrop does, from an explicit generator."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest central crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_frames(frames: torch.Tensor, size: list[int], antialias: bool, mode: str = "bicubic",
                  chunk: int = 8) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, *size]``, ``bicubic`` or ``bilinear``.

    ``antialias=False`` is the official path, torchvision 0.15's resize of a uint8 tensor: a float
    interpolation, clamped and rounded (bilinear: VideoMAE's and UMT's test resize, ``cv2.INTER_LINEAR``,
    which this matches within one grey level). torchvision's newer uint8 bicubic kernel without
    antialiasing departs from it by up to 23 levels, so it is computed here, ``chunk`` frames at a time to
    bound the float copy.
    """
    if antialias:
        return F.resize(frames, size, interpolation=InterpolationMode(mode), antialias=True)
    out = frames.new_empty((frames.shape[0], frames.shape[1], *size))
    for start in range(0, frames.shape[0], chunk):
        part = torch.nn.functional.interpolate(frames[start:start + chunk].float(), size=size, mode=mode,
                                               align_corners=False)
        out[start:start + chunk] = part.clamp_(0, 255).round_()
    return out


class VideoTransform:
    """The official train (``train=True``) or evaluation transform, the package's one entry point for it
    (``viclip.video_transform`` is this class).

    Callable: uint8 ``[T, H, W, 3]`` -> float ``[T, 3, S, S]`` (or batched, ``[B, ...]`` -> ``[B, ...]``);
    uint8 ``[T, 3, S, S]`` with ``normalize=False``, leaving :meth:`normalize` to the consumer.
    ``mean='clip'`` selects CLIP's statistics; ``hflip=0`` turns the flip off, for data whose
    captions say left or right (the synthetic demo); ``antialias=True`` filters before resizing (the
    official pipeline does not, see the module docstring).

    Random draws come from ``generator`` when given (the training stream passes one seeded per
    sample, so a resumed run crops as the first one did), else from torch's global generator.
    """

    def __init__(
        self,
        train: bool,
        image_size: int = 224,
        mean: str | Sequence[float] = "imagenet",
        std: Sequence[float] | None = None,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        normalize: bool = True,
        antialias: bool = False,
    ) -> None:
        if isinstance(mean, str):
            if mean not in _NORMS:
                raise ValueError(f"mean must be one of {sorted(_NORMS)} or three floats, got {mean!r}")
            if std is not None:
                raise ValueError("give std only with an explicit mean, not with a named normalisation")
            mean, std = _NORMS[mean]
        elif std is None:
            raise ValueError("an explicit mean needs an explicit std")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {mean} and {std}")
        self.train, self.image_size, self.normalize_output = train, image_size, normalize
        self.scale, self.ratio, self.hflip, self.antialias = list(scale), list(ratio), hflip, antialias
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        # x/255 then (x - mean)/std, folded into one multiply-add
        self._mul = 1.0 / (255.0 * std_t)
        self._add = -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    def _clip(self, frames: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One clip ``[T, 3, H, W]`` uint8 -> resized uint8 ``[T, 3, S, S]``."""
        size = [self.image_size, self.image_size]
        if not self.train:
            return resize_frames(frames, size, self.antialias)
        height, width = frames.shape[-2:]
        top, left, h, w = random_resized_crop_params(height, width, self.scale, self.ratio, generator)
        out = resize_frames(frames[..., top:top + h, left:left + w], size, self.antialias)
        if torch.rand((), generator=generator) < self.hflip:
            out = out.flip(-1)
        return out

    @property
    def out_dtype(self) -> torch.dtype:
        return torch.float32 if self.normalize_output else torch.uint8

    def normalize(self, video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 ``[..., 3, H, W]`` in any memory order, on any device -> contiguous ``dtype``, scaled
        and normalised (in float32)."""
        if video.dtype != torch.uint8 or video.ndim < 3 or video.shape[-3] != 3:
            raise ValueError(f"normalize expects uint8 [..., 3, H, W], got {video.dtype} {tuple(video.shape)}")
        mul, add = self._mul.to(video.device), self._add.to(video.device)
        return video.to(torch.float32, memory_format=torch.contiguous_format).mul_(mul).add_(add).to(dtype)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """``out`` (of :attr:`out_dtype` and the result's shape) receives the result in place: the
        training stream passes a slot of a batch tensor in shared memory, which saves two copies."""
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.shape[-1] != 3 \
                or frames.ndim not in (4, 5):
            got = f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, torch.Tensor) else type(
                frames)
            raise ValueError(f"VideoTransform expects uint8 [T, H, W, 3] or [B, T, H, W, 3], got {got}")
        batched = frames.ndim == 5
        clips = frames if batched else frames[None]
        clips = clips.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
        if self.train:
            resized = torch.stack([self._clip(c, generator) for c in clips])
        else:  # one call for the whole batch: the resize is the same for every clip
            b, t = clips.shape[:2]
            resized = self._clip(clips.reshape(b * t, *clips.shape[2:]), None).reshape(
                b, t, 3, self.image_size, self.image_size)
        resized = resized if batched else resized[0]
        if out is None:
            out = resized.to(self.out_dtype, memory_format=torch.contiguous_format)
        else:
            out.copy_(resized)
        if not self.normalize_output:
            return out
        return out.mul_(self._mul.to(out.device)).add_(self._add.to(out.device))  # GPU-decoded clips too

