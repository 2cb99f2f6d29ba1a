"""Which weights an evaluation loads: resolve ``checkpoint=``, fingerprint and name it, wise-ft blending.

``checkpoint=`` takes an official ``.pth``, a ``.safetensors`` file, a pretrained folder
(``config.json`` + ``model.safetensors``), ``hf-hub:ORG/NAME[@REVISION]``, or a training run directory
(its newest exported weights). The model size is read from the file (saved config, else tensor
shapes, by :func:`viclip.model.load_model`); ``model=NAME`` forces a registered size instead.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from viclip.errors import ConfigError
from viclip.model import CheckpointError, ViCLIP, init_from_clip
from viclip.model.hub import is_hub_name, is_pretrained_folder, resolve_pretrained
from viclip.model.weights import model_name_of, resolve_clip_weights

WEIGHT_SUFFIXES = (".safetensors", ".pth")
# Kept from the checkpoint by wise_ft: the official scripts' wiseft.keys_to_exclude (zs_*/config.py).
WISE_FT_KEEP = ("vision_encoder.temporal_positional_embedding",)
_EXPECTED = "an official .pth, a .safetensors file, a pretrained folder, hf-hub:ORG/NAME or a training run directory"


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """The weights file behind ``checkpoint=``: the file itself, a hub repo's or pretrained folder's
    ``model.safetensors``, or the newest (by modification time) ``*.safetensors`` / ``*.pth`` under a
    run directory's ``weights/`` (else anywhere below it)."""
    if path is None or str(path) == "":
        raise ConfigError(f"checkpoint= is required: {_EXPECTED}")
    if is_hub_name(path):
        return resolve_pretrained(path)
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if is_pretrained_folder(p):
        return resolve_pretrained(p)
    if p.is_dir():
        # A training run exports each phase to weights/{phase}.pth; DeepSpeed's own files are *.pt.
        search = p / "weights" if (p / "weights").is_dir() else p
        found = [f for f in search.rglob("*")
                 if f.suffix in WEIGHT_SUFFIXES and f.is_file() and not f.name.startswith(".")]
        if not found:
            raise FileNotFoundError(f"checkpoint={p}: a directory without exported weights "
                                    f"(no {' or '.join('*' + s for s in WEIGHT_SUFFIXES)} below {search})")
        return max(found, key=lambda f: (f.stat().st_mtime_ns, str(f)))
    raise FileNotFoundError(f"checkpoint={p}: no such file or directory (expected {_EXPECTED})")


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a weights file (memoised per path, size and mtime: a sweep hashes it once)."""
    st = os.stat(path)
    return _sha256(os.fspath(path), st.st_size, st.st_mtime_ns)


@torch.no_grad()
def wise_ft(model: ViCLIP, clip_weights: str | os.PathLike, alpha: float,
            keep: Sequence[str] = WISE_FT_KEEP) -> Path:
    """Blend in place: ``(1 - alpha) * CLIP-initialised ViCLIP + alpha * model`` (Wortsman et al. 2022);
    returns the CLIP weights file (``clip_weights`` may be an open_clip tag such as ``openai``).

    The zero-shot end is ViCLIP initialised from ``clip_weights`` exactly as training starts
    (``init_from_clip``). Tensors named in ``keep`` stay the model's: by default the temporal embedding,
    which CLIP lacks, as the official scripts' ``wiseft.keys_to_exclude`` does (blending it would halve it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"wise_ft.alpha must be in [0, 1], got {alpha}")
    try:
        path = resolve_clip_weights(clip_weights, model_name_of(model.cfg))
    except CheckpointError as e:
        raise CheckpointError(f"wise_ft.clip={clip_weights}: {e}") from e
    init = ViCLIP(model.cfg)
    init_from_clip(init, path)
    init_sd = init.state_dict()
    state = model.state_dict()
    unknown = sorted(set(keep) - set(state))
    if unknown:
        raise ConfigError(f"wise_ft.keep names tensors the model does not have: {unknown[:3]}")
    for name, tensor in state.items():
        if tensor.is_floating_point() and name not in keep:
            tensor.mul_(alpha).add_(init_sd[name].to(tensor), alpha=1.0 - alpha)
    return path
