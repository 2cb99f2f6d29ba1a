"""ViCLIP weights by name: Hugging Face-style folders and hub repos, and :func:`load_model` over every form.

A pretrained folder is ``config.json`` (the :class:`ViCLIPConfig` fields plus ``model_name``, the
registered size) and ``model.safetensors`` (which also carries the config in its metadata, so the
file alone loads too). ``hf-hub:ORG/NAME`` (optionally ``@REVISION``) names such a folder on the
Hugging Face Hub; it is fetched with ``hf_hub_download``, so the hub cache (``HF_HUB_CACHE``) and
offline mode (``HF_HUB_OFFLINE=1``) apply as they do for every Hugging Face library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

from viclip.atomic import atomic_write
from viclip.errors import ConfigError
from viclip.model.viclip import ViCLIP, ViCLIPConfig, get_config, with_overrides
from viclip.model.weights import (
    CheckpointError,
    InitReport,
    export_official,
    export_safetensors,
    init_from_clip,
    load_weights,
    model_name_of,
    read_config,
)

HF_HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def is_hub_name(ref: str | os.PathLike) -> bool:
    """``hf-hub:ORG/NAME[@REVISION]``, open_clip's and timm's spelling of a hub repo."""
    return isinstance(ref, str) and ref.startswith(HF_HUB_PREFIX)


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``config.json`` and ``model.safetensors``."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_pretrained(model: ViCLIP, save_directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` then ``config.json`` (last: a folder with a config is complete), atomically."""
    folder = Path(save_directory)
    export_safetensors(model, folder / WEIGHTS_NAME)
    config = {"model_name": model_name_of(model.cfg), **dataclasses.asdict(model.cfg)}
    atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder


def push_to_hub(model: ViCLIP, repo_id: str, *, commit_message: str = "Upload ViCLIP weights",
                private: bool | None = None, token: str | None = None, revision: str | None = None,
                create_pr: bool = False) -> str:
    """Create ``repo_id`` if needed and upload the :func:`save_pretrained` folder in one commit; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                   revision=revision, create_pr=create_pr)
    return commit.commit_url


def _hub_download(ref: str, filename: str, cache_dir: str | os.PathLike | None) -> Path:
    """One file of the repo ``ref`` names, from the hub cache or the hub; any failure is one CheckpointError."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    repo_id, _, revision = ref.removeprefix(HF_HUB_PREFIX).partition("@")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        cache = Path(cache_dir or constants.HF_HUB_CACHE)
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CheckpointError(
            f"{ref}: {filename} is not in the Hugging Face cache {cache} and {why}: download it once with network "
            f"access (hf download {repo_id}) or point HF_HUB_CACHE at a cache that holds it"
        ) from e
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError) as e:
        raise CheckpointError(f"{ref}: cannot fetch {filename} ({str(e).splitlines()[0]})") from e


def resolve_pretrained(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights file ``ref`` names: a hub repo's ``model.safetensors`` (its ``config.json`` beside it
    in the cache), a pretrained folder's, or ``ref`` itself."""
    if is_hub_name(ref):
        # The config first (it lands in the weights' snapshot folder): a repo that is not ViCLIP's fails
        # here, before a large download.
        read_config(_hub_download(ref, CONFIG_NAME, cache_dir))
        return _hub_download(ref, WEIGHTS_NAME, cache_dir)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not is_pretrained_folder(path):
            raise CheckpointError(f"{path}: a folder without {CONFIG_NAME} and {WEIGHTS_NAME} "
                                  "(not a pretrained folder)")
        return path / WEIGHTS_NAME
    return path


def _config_of(weights: Path) -> ViCLIPConfig:
    """A pretrained folder's config.json for its model.safetensors, else the file's own (see read_config)."""
    if weights.name == WEIGHTS_NAME and (weights.parent / CONFIG_NAME).is_file():
        return read_config(weights.parent / CONFIG_NAME)
    return read_config(weights)


def model_config(name: str | None, weights: Path, **overrides) -> ViCLIPConfig:
    """The config :func:`load_model` builds for ``weights`` (a resolved file): the registered ``name``'s, else
    the file's, then ``overrides``. A driver reads it to check its settings before its workers load weights."""
    return get_config(name, **overrides) if name else with_overrides(_config_of(weights), **overrides)


def load_model(
    name: str | None = None, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
    **overrides
) -> ViCLIP:
    """A ViCLIP in eval mode with weights from ``checkpoint``: an official ``.pth``, a ``.safetensors``
    file, a pretrained folder or ``hf-hub:ORG/NAME[@REVISION]``. The size is read from the config
    (saved, else inferred from tensor shapes) when ``name`` is None; ``overrides`` (e.g.
    ``num_frames=16``) change it before loading."""
    if checkpoint is None:
        raise ConfigError("load_model needs checkpoint= (a file, a pretrained folder or hf-hub:ORG/NAME; "
                          "use create_model for random weights)")
    weights = resolve_pretrained(checkpoint)
    model = ViCLIP(model_config(name, weights, **overrides))
    load_weights(model, weights)
    return model.to(device).eval()


def export_weights(model: ViCLIP, destination: str | os.PathLike) -> Path:
    """Write by destination: ``.pth`` the official layout, ``.safetensors`` one file, else a pretrained folder."""
    suffix = Path(destination).suffix
    if suffix == ".pth":
        return export_official(model, destination)
    if suffix == ".safetensors":
        return export_safetensors(model, destination)
    return save_pretrained(model, destination)


def convert_weights(source: str, destination: str, model: str | None = None, num_frames: int | None = None,
                    from_clip: bool = False) -> tuple[Path, InitReport | None]:
    """Load ViCLIP weights, or initialise them from CLIP, and write them by destination.

    ``source`` is ViCLIP weights (a file, pretrained folder or hf-hub name) or, with ``from_clip``,
    CLIP weights (a file or an open_clip tag such as ``openai``) for the registered size ``model``.
    Returns the written path (see :func:`export_weights`) and, with ``from_clip``, the init report.
    """
    overrides = {"num_frames": num_frames} if num_frames is not None else {}
    report = None
    if from_clip:
        if not model:
            raise ConfigError("--from-clip needs --model (vit_l14 or vit_b16): the size CLIP initialises")
        viclip_model = ViCLIP(get_config(model, **overrides))
        report = init_from_clip(viclip_model, source)
    else:
        viclip_model = load_model(model, checkpoint=source, **overrides)
    return export_weights(viclip_model, destination), report
