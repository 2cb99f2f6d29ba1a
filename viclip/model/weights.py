"""Reading, checking, converting and writing ViCLIP weights, and CLIP start weights by open_clip name.

Loading weights never runs code: every read goes through ``torch.load(..., weights_only=True)`` or
safetensors (a checkpoint that needs arbitrary unpickling is refused, never executed), and OpenAI's
TorchScript CLIP archives (``ViT-L-14.pt``) are read as data by :mod:`viclip.model.torchscript`, never
``torch.jit.load``. Only floating-point tensors are weights: an integer tensor is refused, not cast.
Official ``.pth`` files hold the state dict under ``'model'`` (DeepSpeed: ``'module'``) with the names
of ``tests/data/official_viclip_keys.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from viclip.atomic import atomic_path
from viclip.errors import ConfigError, DataError, UnsafeFileError
from viclip.model.torchscript import read_torchscript
from viclip.model.viclip import MODEL_CONFIGS, ViCLIP, ViCLIPConfig
from viclip.model.vision import fit_temporal_embedding

StateDict = dict[str, torch.Tensor]
_TEMPORAL_KEY = "vision_encoder.temporal_positional_embedding"
_MAX_LISTED = 20


class CheckpointError(DataError):
    """A weights file that cannot be read safely or does not fit the model (names the file)."""


# Attributes OpenAI's TorchScript CLIP keeps beside its weights (its own loader drops them too).
_JIT_ATTRIBUTES = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with ``constants.pkl`` (``torch.save`` zips have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in z.namelist())


def _read_file(path: Path) -> tuple[object, dict]:
    """(raw object, metadata) of a .pth/.pt/.bin, .safetensors or TorchScript file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_torchscript(path):
        return {k: v for k, v in read_torchscript(path).items() if k not in _JIT_ATTRIBUTES}, {}
    if path.suffix == ".safetensors":
        return _read_safetensors(path, tensors=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"{path}: refused: the file needs arbitrary unpickling (objects beyond tensors and plain "
            f"containers), which could run code. Re-save its state dict with torch.save(state_dict) "
            f"from a trusted environment. Loader said: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({e})") from e
    meta = obj.get("viclip_config") if isinstance(obj, Mapping) else None
    return obj, {"viclip_config": json.dumps(meta)} if meta else {}


def _read_safetensors(path: Path, tensors: bool) -> tuple[StateDict, dict]:
    """(tensors, or none when not asked: the header alone is read, metadata) of a .safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            read = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 (not a mapping)
            return read, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _unwrap(obj: object, path: Path) -> StateDict:
    """The tensor mapping inside a checkpoint: under 'model', 'module' or 'state_dict', minus 'module.'."""
    if isinstance(obj, Mapping):
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), "
                              f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(bad)}")
    # Loading casts to the model's float dtype: int8 weights would become a near-zero model, silently.
    ints = [f"{k} ({v.dtype})" for k, v in obj.items() if not v.is_floating_point()]
    if ints:
        raise CheckpointError(f"{path}: tensors that are not floating point (quantised or not weights): "
                              f"{_listing(ints)}; give float weights (dequantise first)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint_file(path: str | os.PathLike) -> StateDict:
    """The state dict of an official/DeepSpeed ``.pth`` or a ``.safetensors`` file, read safely."""
    path = Path(path)
    return _unwrap(_read_file(path)[0], path)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return f"{shown} (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else shown


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


_GEOMETRY = ("image_size", "patch_size", "tubelet_size", "width", "layers", "embed_dim", "text_width", "text_layers",
             "context_length", "vocab_size")


def model_name_of(cfg: ViCLIPConfig) -> str:
    """The registered name of the same geometry (the frame count aside: it is a protocol choice),
    else a name made of its sizes."""
    for name, reg in MODEL_CONFIGS.items():
        if all(getattr(reg, f) == getattr(cfg, f) for f in _GEOMETRY):
            return name
    return f"vit_w{cfg.width}_l{cfg.layers}_p{cfg.patch_size}"


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> ViCLIPConfig:
    """Rebuild the architecture from tensor shapes; heads come from a registered config of the same
    geometry, else width // 64 (CLIP's head size), since shapes do not record them."""
    try:
        conv = sd["vision_encoder.conv1.weight"]
        width, _, tubelet, patch, _ = conv.shape
        geometry = {
            "patch_size": patch,
            "tubelet_size": tubelet,
            "width": width,
            "image_size": round((sd["vision_encoder.positional_embedding"].shape[0] - 1) ** 0.5) * patch,
            "num_frames": sd[_TEMPORAL_KEY].shape[1] * tubelet,
            "layers": _count_blocks(sd, "vision_encoder.transformer.resblocks."),
            "embed_dim": sd["vision_encoder.proj"].shape[1],
            "text_width": sd["text_encoder.token_embedding.weight"].shape[1],
            "vocab_size": sd["text_encoder.token_embedding.weight"].shape[0],
            "context_length": sd["text_encoder.positional_embedding"].shape[0],
            "text_layers": _count_blocks(sd, "text_encoder.transformer.resblocks."),
        }
        guess = ViCLIPConfig(**geometry, heads=max(1, width // 64), text_heads=max(1, geometry["text_width"] // 64))
    except (KeyError, ValueError) as e:  # ConfigError too: a shape out of bounds
        raise CheckpointError(f"not a ViCLIP state dict: cannot infer the architecture ({e})") from e
    name = model_name_of(guess)
    return dataclasses.replace(MODEL_CONFIGS[name], **geometry) if name in MODEL_CONFIGS else guess


# Fields older exports carry that no longer exist: dropped with a warning (the file still loads).
_RETIRED_FIELDS = {"mask_ratio": "masking comes from the training phases (train.phases.*.mask_ratio); the model "
                                 "field was read by nothing"}


def config_from_dict(saved: object, source: str) -> ViCLIPConfig:
    """The one rule for a saved config (a folder's config.json, an export's metadata): every field must be
    a ViCLIPConfig field and pass its checks. An unknown field is refused, not dropped: it means another
    model or a newer viclip, and building without it would load the weights into a different architecture
    (or behaviour) without a word. Retired fields are dropped with a warning."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: expected a JSON object of ViCLIPConfig fields, got {type(saved).__name__}")
    saved = {k: v for k, v in saved.items() if k != "model_name"}  # derived from the fields; for people reading
    for name in sorted(set(saved) & set(_RETIRED_FIELDS)):
        warnings.warn(f"{source}: ignoring the retired config field {name}={saved.pop(name)!r}: "
                      f"{_RETIRED_FIELDS[name]}", stacklevel=3)
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(ViCLIPConfig)})
    if unknown:
        raise CheckpointError(f"{source}: not a ViCLIP config (unknown fields: {', '.join(unknown)})")
    try:
        return ViCLIPConfig(**saved)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from e


def read_config(path: str | os.PathLike) -> ViCLIPConfig:
    """The config of a pretrained folder's ``config.json``, else the one saved in an export's metadata,
    else the one inferred from the tensors (see :func:`config_from_dict`)."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            return config_from_dict(json.loads(path.read_text()), str(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
    # an export's config sits in the safetensors header: read the tensors only when it is not there
    obj, meta = _read_safetensors(path, tensors=False) if path.suffix == ".safetensors" and path.is_file() else ({}, {})
    if "viclip_config" not in meta:
        obj, meta = _read_file(path)
    if "viclip_config" in meta:
        return config_from_dict(json.loads(meta["viclip_config"]), f"{path} (its viclip_config)")
    return config_from_state_dict(_unwrap(obj, path))


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one error listing every missing, unexpected and mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(sd))
        if sd[k].shape != own[k].shape
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))


def load_weights(model: ViCLIP, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> None:
    """Load a full ViCLIP state dict strictly, resampling the temporal embedding to the model's frames."""
    source = "state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
    sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_checkpoint_file(checkpoint)
    own = model.state_dict()
    if _TEMPORAL_KEY in sd and sd[_TEMPORAL_KEY].ndim == 3 and sd[_TEMPORAL_KEY].shape != own[_TEMPORAL_KEY].shape:
        sd[_TEMPORAL_KEY] = fit_temporal_embedding(sd[_TEMPORAL_KEY], own[_TEMPORAL_KEY].shape[1])
    check_state_dict(model, sd, source)
    model.load_state_dict(sd, strict=True)


def _export_tensors(model: ViCLIP) -> StateDict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def export_official(model: ViCLIP, path: str | os.PathLike) -> Path:
    """Write ``{'model': state_dict}`` as the official release does (plus our config, which the
    official loader ignores), atomically."""
    payload = {"model": _export_tensors(model), "viclip_config": dataclasses.asdict(model.cfg)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def export_safetensors(model: ViCLIP, path: str | os.PathLike) -> Path:
    """Write the state dict as safetensors with the config in the metadata, atomically."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "viclip_config": json.dumps(dataclasses.asdict(model.cfg))}
    with atomic_path(path) as tmp:
        save_file(_export_tensors(model), tmp, metadata=meta)
    return Path(path)


@dataclass
class InitReport:
    """What :func:`init_from_clip` did with each tensor."""

    copied: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)  # 2-D patch kernel -> 3-D
    resized: list[str] = field(default_factory=list)  # position tables cut or resampled
    converted: list[str] = field(default_factory=list)  # logit_scale -> temp
    new: list[str] = field(default_factory=list)  # left at their initialisation
    unused: list[str] = field(default_factory=list)  # in the file, not in ViCLIP

    def __str__(self) -> str:
        parts = [f"{k} {len(v)}" for k, v in dataclasses.asdict(self).items()]
        details = [f"{k}: {_listing(v)}" for k, v in dataclasses.asdict(self).items() if v and k != "copied"]
        return "CLIP init: " + ", ".join(parts) + "".join(f"\n  {d}" for d in details)


_CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _clip_to_viclip_name(key: str) -> str | None:
    if key.startswith("visual."):
        return "vision_encoder." + key.removeprefix("visual.")
    if key.startswith(_CLIP_TEXT_KEYS):
        return "text_encoder." + key
    return None


def _inflate_patch_kernel(weight: torch.Tensor, tubelet: int) -> torch.Tensor:
    """``[w, 3, p, p]`` -> ``[w, 3, k, p, p]`` with the 2-D kernel on the centre frame (official
    ``center=True``), so a clip of identical frames embeds like the image did."""
    out = weight.new_zeros(weight.shape[0], weight.shape[1], tubelet, *weight.shape[2:])
    out[:, :, tubelet // 2] = weight
    return out


def _resize_grid(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Bicubic resampling of a ``[1 + g*g, C]`` CLIP position table to ``tokens`` rows."""
    old, new = round((pos.shape[0] - 1) ** 0.5), round((tokens - 1) ** 0.5)
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(pos.dtype)])


# The open_clip architecture whose pretrained tags (openai, laion2b_s32b_b82k, ...) fit each registered size.
CLIP_ARCHITECTURES = {"vit_l14": "ViT-L-14", "vit_b16": "ViT-B-16"}


def _not_cached_location(pretrained: dict, cache_dir: str | os.PathLike | None) -> str:
    """Where open_clip's download_pretrained looks for ``pretrained``: the hub cache folder of its
    repo (HF_HUB_CACHE unless ``cache_dir``), else the file its URL is saved to."""
    from open_clip.pretrained import has_hf_hub

    if pretrained.get("hf_hub") and has_hf_hub():
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        repo_id = os.path.split(pretrained["hf_hub"])[0]
        return str(Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model"))
    return str(Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(pretrained["url"]))


def resolve_clip_weights(weights: str | os.PathLike, model_name: str, cache_dir: str | os.PathLike | None = None
                         ) -> Path:
    """The file behind CLIP start weights: ``weights`` itself when it is a file, else an open_clip
    pretrained tag of the architecture of ``model_name`` (``openai``, ``laion2b_s32b_b82k``), taken
    from open_clip's cache or downloaded into it (the Hugging Face cache, or ``cache_dir``)."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    tag = os.fspath(weights)
    arch = CLIP_ARCHITECTURES.get(model_name)
    if arch is None:
        known = ", ".join(f"{k} ({v})" for k, v in CLIP_ARCHITECTURES.items())
        raise CheckpointError(f"CLIP weights {tag!r}: no such file, and open_clip tags are known only for {known}, "
                              f"not {model_name}: give a file path")
    pretrained = get_pretrained_cfg(arch, tag)
    if not pretrained:
        raise CheckpointError(f"CLIP weights {tag!r}: no such file, and not an open_clip pretrained tag of {arch} "
                              f"(tags: {', '.join(list_pretrained_tags_by_model(arch))})")
    if not pretrained.get("quick_gelu"):
        warnings.warn(f"open_clip {arch}/{tag} was trained with GELU; ViCLIP's towers use QuickGELU (as OpenAI's "
                      f"CLIP and the released ViCLIP), so the initial model differs from that CLIP until trained",
                      stacklevel=2)
    try:
        found = download_pretrained(pretrained, cache_dir=os.fspath(cache_dir) if cache_dir else None)
    except (OSError, RuntimeError) as e:  # not cached and offline, unreachable, checksum mismatch
        raise CheckpointError(
            f"CLIP weights {arch}/{tag} are not in the cache {_not_cached_location(pretrained, cache_dir)} and could "
            f"not be downloaded ({str(e).splitlines()[0]}): run once with network access to fill the cache, point "
            f"HF_HUB_CACHE at a cache that holds them, or give a file path"
        ) from e
    return Path(found)


def init_from_clip(model: ViCLIP, weights: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                   ) -> InitReport:
    """Initialise both towers from CLIP image-text weights (OpenAI or open_clip naming; a state dict,
    an OpenAI TorchScript archive or an open_clip pretrained tag, see :func:`resolve_clip_weights`)."""
    path = resolve_clip_weights(weights, model_name_of(model.cfg), cache_dir)
    clip = _unwrap(_read_file(path)[0], path)
    target = model.state_dict()
    report = InitReport()
    new_sd: StateDict = {}
    for key, value in clip.items():
        if key == "logit_scale":
            # CLIP learns log(1 / T); ViCLIP keeps T itself, floored like the official clamp.
            new_sd["temp"] = value.detach().float().neg().exp().clamp(min=model.cfg.temp_min).reshape(())
            report.converted.append(key)
            continue
        name = _clip_to_viclip_name(key)
        if name is None or name not in target:
            report.unused.append(key)
            continue
        want = target[name].shape
        if name == "vision_encoder.conv1.weight" and value.ndim == 4:
            value = _inflate_patch_kernel(value, want[2])
            report.inflated.append(name)
        elif name == "vision_encoder.positional_embedding" and value.shape != want:
            value = _resize_grid(value, want[0])
            report.resized.append(name)
        elif name == "text_encoder.positional_embedding" and value.shape != want:
            rows = want[0]
            value = value[:rows] if value.shape[0] >= rows else F.pad(value, (0, 0, 0, rows - value.shape[0]))
            report.resized.append(name)
        else:
            report.copied.append(name)
        if value.shape != want:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, ViCLIP {name} needs {tuple(want)}; "
                f"is this CLIP the same size as the model ({model.cfg.width} wide, patch {model.cfg.patch_size})?"
            )
        new_sd[name] = value
    report.new = sorted(set(target) - set(new_sd))
    target.update(new_sd)
    model.load_state_dict(target, strict=True)
    return report
