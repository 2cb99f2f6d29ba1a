"""Video and text embeddings for a whole evaluation set, split across ranks and gathered back.

Each rank embeds its strided shard (see :mod:`viclip.distributed`); rows come back in
dataset order on every rank. Unreadable videos keep a zero row and ``ok = False``, so indices stay
aligned with the annotation file and the caller decides how to exclude and count them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from viclip.data.annotations import VideoText, VideoTextDataset
from viclip.data.transforms import VideoTransform
from viclip.data.video import decode_plan
from viclip.distributed import gather_rows, shard_indices, world
from viclip.errors import ConfigError
from viclip.eval.protocol import VideoProtocol
from viclip.eval.views import MultiViewDataset, Views, encode_views
from viclip.model import ViCLIP, tokenize
from viclip.progress import progress as progress_bar


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (GPU evaluation), else full precision."""
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def protocol_transform(protocol: VideoProtocol) -> VideoTransform:
    """The eval resize to uint8 (for the loader workers); its ``normalize`` runs on the device."""
    # uint8 through the workers and onto the device (a quarter of float32's bytes), normalised there
    return VideoTransform(False, image_size=protocol.image_size, mean=protocol.mean, normalize=False,
                          antialias=protocol.antialias)


@torch.no_grad()
def encode_video_batch(model: ViCLIP, video: torch.Tensor, transform: VideoTransform, device: torch.device,
                       precision: str = "fp32") -> torch.Tensor:
    """uint8 clips ``[B, T, 3, H, W]`` from :func:`protocol_transform` -> float32 ``[B, D]`` on the CPU."""
    with autocast(device, precision):
        emb = model.encode_video(transform.normalize(video.to(device, non_blocking=True)))
    return emb.float().cpu()


@torch.no_grad()
def encode_text_batch(model: ViCLIP, texts: Sequence[str], device: torch.device, precision: str = "fp32",
                      official_cleaning: bool = True) -> torch.Tensor:
    """Texts -> float32 ``[N, D]`` on the CPU, tokenised with the official cleaning (one forward pass)."""
    tokens = tokenize(list(texts), context_length=model.cfg.context_length, official_cleaning=official_cleaning)
    with autocast(device, precision):
        return model.encode_text(tokens.to(device)).float().cpu()


@torch.no_grad()
def embed_videos(
    model: ViCLIP, records: Sequence[VideoText], protocol: VideoProtocol, device: torch.device,
    batch_size: int = 32, num_workers: int = 4, precision: str = "fp32", progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [N, D] float32 on the CPU, ok [N] bool)`` in the order of ``records``; ``[N, V, D]``
    for a protocol of V > 1 views. ``progress`` shows rank 0's share with its time left."""
    rank, world_size = world()
    mine = shard_indices(len(records), rank, world_size)
    transform = protocol_transform(protocol)
    views = Views.parse(protocol.views)
    backend, num_workers, pin_memory = decode_plan(protocol.backend, num_workers, device.type == "cuda")
    if views.count == 1:
        dataset = VideoTextDataset([records[i] for i in mine], num_frames=protocol.num_frames,
                                   sampling=protocol.sampling, transform=transform, backend=backend,
                                   max_pixels=protocol.max_pixels, max_seconds=protocol.max_seconds)
    else:
        dataset = MultiViewDataset([records[i] for i in mine], protocol, backend)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        collate_fn=VideoTextDataset.collate, pin_memory=pin_memory, persistent_workers=False)
    local = torch.zeros(len(mine), *([views.count] if views.count > 1 else []), model.cfg.embed_dim)
    ok = torch.zeros(len(mine), dtype=torch.bool)
    desc = "video embeddings" + (f" (rank 0: {len(mine)} of {len(records)})" if world_size > 1 else "")
    bar = progress_bar(total=len(mine), desc=desc, unit="video", enabled=progress and rank == 0)
    for batch in loader:
        bar.update(len(batch["index"]) + len(batch["skipped"]))
        if batch["video"] is None:
            continue
        if views.count == 1:
            local[batch["index"]] = encode_video_batch(model, batch["video"], transform, device, precision)
        else:
            local[batch["index"]] = encode_views(lambda v: encode_video_batch(model, v, transform, device, precision),
                                                 batch["video"])
        ok[batch["index"]] = True
    bar.close()
    return _gather(local, len(records), device), _gather(ok, len(records), device)


@torch.no_grad()
def embed_texts(
    model: ViCLIP, texts: Sequence[str], device: torch.device, batch_size: int = 256, precision: str = "fp32",
    official_cleaning: bool = True,
) -> torch.Tensor:
    """``[N, D]`` float32 on the CPU, in the order of ``texts``; tokenised with the official cleaning."""
    rank, world_size = world()
    mine = shard_indices(len(texts), rank, world_size)
    local = torch.zeros(len(mine), model.cfg.embed_dim)
    for start in range(0, len(mine), batch_size):
        chunk = [texts[i] for i in mine[start:start + batch_size]]
        local[start:start + len(chunk)] = encode_text_batch(model, chunk, device, precision, official_cleaning)
    return _gather(local, len(texts), device)


def _gather(local: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    # NCCL gathers CUDA tensors only; gloo and the single-process path stay on the CPU.
    if world()[1] > 1 and device.type == "cuda":
        return gather_rows(local.to(device), n).cpu()
    return gather_rows(local, n)
