"""How videos become model input for evaluation and embedding: the official protocol's fields and defaults.

Torch-free, so the tools that take these fields as options (embed-clips) parse and print ``--help``
without loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from viclip.data.formats import MAX_PIXELS


@dataclass(frozen=True)
class VideoProtocol:
    """How videos become model input. The defaults are the official evaluation protocol, defined only
    here: ``viclip/configs/eval.yaml`` leaves these fields null and :mod:`viclip.eval.runner` reads them from
    this class (``image_size`` is always the model's)."""

    num_frames: int = 8
    sampling: str = "middle"
    image_size: int = 224
    mean: str = "imagenet"
    backend: str = "auto"
    views: str = "1x1"  # temporal clips x spatial crops, scores averaged (viclip.eval.views)
    view_resize: str = "official"  # several crops: UMT's bilinear short-side resize, or "bicubic" (viclip.eval.views)
    antialias: bool = False  # the official resize is not antialiased (viclip.data.transforms)
    max_pixels: int | None = MAX_PIXELS  # larger frames are scaled down in the decoder (viclip.data.video)
    max_seconds: float | None = None  # frames from each video's first seconds only (DiDeMo: 30, UMT's trimmed30)
