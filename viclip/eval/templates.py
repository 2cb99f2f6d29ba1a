"""Zero-shot class prompts: the official template set and the two ways to reduce over templates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from viclip.errors import ConfigError

# The 16 templates of the official ViCLIP zero-shot action-recognition evaluation ({} = class name).
# Each prompt then goes through the official caption cleaning, like every caption.
KINETICS_TEMPLATES: tuple[str, ...] = (
    "a photo of action {}",
    "a picture of action {}",
    "Human action of {}",
    "{}, an action",
    "{} this is an action",
    "{}, a video of action",
    "Playing action of {}",
    "{}",
    "Playing a kind of action, {}",
    "Doing a kind of action, {}",
    "Look, the human is {}",
    "Can you recognize the action of {}?",
    "Video classification of {}",
    "A video of {}",
    "The man is {}",
    "The woman is {}",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"kinetics": KINETICS_TEMPLATES, "none": ("{}",)}
REDUCTIONS = ("sim", "embed")


def get_templates(name: str) -> tuple[str, ...]:
    """A named template set (``kinetics``: the official 16; ``none``: the bare class name)."""
    if name not in TEMPLATE_SETS:
        raise ConfigError(f"templates.set={name!r} is unknown; choose one of {sorted(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def expand(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: all templates of class 0, then class 1, ..."""
    return [tpl.format(name) for name in class_names for tpl in templates]


def class_prototypes(text_emb: torch.Tensor, num_templates: int, reduce: str = "sim") -> torch.Tensor:
    """One vector per class from ``[C * K, D]`` prompt embeddings (class-major), so that
    ``normalize(video) @ prototypes.T`` is the class score.

    ``sim`` (official): the mean over templates of the cosine similarity. Cosine is linear in the
    normalised text vector, so this is the dot product with the *unrenormalised* mean of the
    normalised prompt embeddings. ``embed`` (open_clip's way): that mean renormalised, i.e. the
    cosine with the mean text embedding; it differs from ``sim`` by a per-class scale, which changes
    the ranking across classes whose prompts agree more or less with each other.
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"templates.reduce={reduce!r} is unknown; choose one of {REDUCTIONS}")
    if text_emb.shape[0] % num_templates:
        raise ValueError(f"{text_emb.shape[0]} prompt embeddings are not a multiple of {num_templates} templates")
    mean = F.normalize(text_emb.float(), dim=-1).view(-1, num_templates, text_emb.shape[-1]).mean(dim=1)
    return F.normalize(mean, dim=-1) if reduce == "embed" else mean


def class_scores(video_emb: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Scores ``[N, C]`` of videos against class prototypes (cosine-scale, see :func:`class_prototypes`)."""
    return F.normalize(video_emb.float(), dim=-1) @ prototypes.T
