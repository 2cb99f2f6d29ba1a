"""Embeddings at scale: ViCLIP video and caption embeddings of many clips, written as parquet shards.

The input is training shards (webdataset tars: a directory or a brace pattern), clip tables (a
stage directory or parquet files, clips read from the stage's tars by ``clip_tar``/``clip_key``) or
a folder of videos (captions from a ``.txt`` beside a video, when there is one). Each input unit (a
tar, a table, ``clips_per_shard`` videos of a folder) is one output shard: ``{s:05d}.parquet`` (one
row per clip: ``clip_id``, ``video_id``, ``aesthetic``, ``video_embedding``, ``text_embedding``
and ``similarity`` where a caption exists, ``error`` where the clip could not be read) and then
``{s:05d}.stats.json``, the done mark, both renamed into place (:mod:`viclip.atomic`), with the
settings in ``config.json`` checked on every rerun, as the curation stages do. A rerun skips done
shards.

Videos and captions go through the evaluation path (:mod:`viclip.eval.embed`: the same decode,
resize, normalisation and autocast), so a clip's embedding equals the one ``eval.py`` caches for the
same checkpoint and protocol. Embeddings are stored unnormalised, as ``encode_video`` returns them.

The shards are a :class:`~viclip.curation.engine.ShardJob` for an engine (``--engine``): this process
(shard after shard, one model), or Ray actors that each load the model once and take shard after shard;
both write the same files, so a rerun may switch engines. Under torchrun (or a SLURM array,
``task``/``num_tasks``), worker ``task * world + rank`` of ``num_tasks * world`` owns the shards ``s``
with ``s % workers == worker`` and runs them on its engine: each clip is embedded once, and ranks
never wait for each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.engine import Advance, Engine, LocalEngine, ShardJob, ShardRunner
from viclip.curation.frames import ClipFrames, StoredClip, decoded_batches, kept_clips, number
from viclip.curation.stage_configs import INPUT_KINDS, EmbedConfig
from viclip.curation.stages import StageDir, clips_dir_of, record_or_check_settings, shard_name, stats_name
from viclip.curation.table import STATS_SUFFIX, table_files
from viclip.data.formats import VIDEO_EXTENSIONS
from viclip.data.tars import SIZES_FILE, expand_shards, member_key, read_member
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video
from viclip.distributed import init_from_env, pick_device, world
from viclip.errors import ConfigError, DataError
from viclip.eval.embed import encode_text_batch, encode_video_batch, protocol_transform
from viclip.eval.model_loading import file_sha256
from viclip.eval.protocol import VideoProtocol
from viclip.model import ViCLIP, load_model
from viclip.model.hub import model_config, resolve_pretrained
from viclip.progress import progress as progress_bar


@dataclass(frozen=True)
class Unit:
    """An input unit, planned cheaply and read only when its shard is due: a tar, a table or a folder slice."""

    kind: str
    path: str
    clips: tuple[StoredClip, ...] = ()  # folder slices only
    clips_dir: str | None = None  # tables: where their tars are


def _detect_kind(inputs: Sequence[str]) -> str:
    first = Path(inputs[0])
    if str(first).endswith(".parquet") or (first.is_dir() and any(first.glob(f"*{STATS_SUFFIX}"))):
        return "tables"
    if ".tar" in str(first) or (first.is_dir() and ((first / SIZES_FILE).exists() or any(first.glob("*.tar")))):
        return "tars"
    if first.is_dir():
        return "folder"
    raise FileNotFoundError(f"--input {first}: not a stage directory, parquet table, tar shards or video folder")


def plan_units(inputs: Sequence[str], kind: str = "auto", clips_per_shard: int = 1000) -> list[Unit]:
    """The input units in a fixed order, so shard ``s`` is the same unit on every rank and rerun."""
    if kind not in INPUT_KINDS:
        raise ConfigError(f"--input-kind must be one of {INPUT_KINDS}, got {kind!r}")
    kind = _detect_kind(inputs) if kind == "auto" else kind
    if kind == "tables":
        units = []
        for path in inputs:
            clips_dir = str(clips_dir_of(Path(path))) if Path(path).is_dir() else str(Path(path).parent)
            units += [Unit("tables", str(f), clips_dir=clips_dir) for f in table_files([path])]
        return units
    if kind == "tars":
        shards = expand_shards(list(inputs))
        remote = [s for s in shards if "://" in s or s.startswith("pipe:")]
        if remote:
            raise ConfigError(f"--input {remote[0]}: embedding reads local tars by member (random access)")
        return [Unit("tars", s) for s in shards]
    if clips_per_shard < 1:
        raise ConfigError(f"--clips-per-shard must be >= 1, got {clips_per_shard}")
    clips = []
    for root in map(Path, inputs):
        if not root.is_dir():
            raise FileNotFoundError(f"video folder not found: {root}")
        for p in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()):
            sidecar = p.with_suffix(".txt")
            caption = sidecar.read_text().strip() if sidecar.is_file() else None
            clips.append(StoredClip(str(p), clip_id=str(p.relative_to(root).with_suffix("")), caption=caption or None))
    if not clips:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) under {list(inputs)}")
    return [Unit("folder", str(inputs[0]), tuple(clips[i:i + clips_per_shard]))
            for i in range(0, len(clips), clips_per_shard)]


def unit_clips(unit: Unit) -> list[StoredClip]:
    """The clips of a unit, in order (tars: member order; tables: the kept rows with a clip)."""
    if unit.kind == "folder":
        return list(unit.clips)
    if unit.kind == "tables":
        table = pq.read_table(unit.path)
        if "clip_id" not in table.column_names:
            raise DataError(f"{unit.path}: clip table lacks column clip_id (give split_scenes' output or later)")
        return kept_clips(table, unit.clips_dir, unit.path)
    return _tar_clips(unit.path)


def _tar_clips(path: str) -> list[StoredClip]:
    """The mp4 members of a tar with their caption and metadata members. A bad metadata member (not UTF-8,
    not JSON, oversized) or a damaged tar (truncated, corrupt headers) costs the clips it touches: each is
    a clip with its error, counted as failed, never the run."""
    clips: list[StoredClip] = []
    meta: dict[str, dict[str, str]] = {}
    bad: dict[str, str] = {}
    videos: list[tuple[str, str]] = []
    damage = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                split = member_key(m.name) if m.isfile() else None
                if split is None:
                    continue
                key, ext = split
                if ext == "mp4":
                    videos.append((key, m.name))
                elif ext in ("json", "txt"):
                    try:
                        meta.setdefault(key, {})[ext] = read_member(tar, m, path).decode("utf-8")
                    except (DataError, UnicodeDecodeError) as e:
                        bad[key] = f"{path}:{m.name}: {type(e).__name__}: {e}"
    except (tarfile.TarError, OSError, EOFError) as e:
        damage = f"{path}: damaged tar after {len(videos)} clips: {type(e).__name__}: {e}"
    for key, name in videos:
        info, error = {}, bad.get(key)
        if error is None and "json" in meta.get(key, {}):
            try:
                info = json.loads(meta[key]["json"])
            except json.JSONDecodeError as e:
                error = f"{path}:{key}.json: not JSON: {e}"
            if not isinstance(info, dict):
                info, error = {}, error or f"{path}:{key}.json: not a JSON object"
        caption = meta.get(key, {}).get("txt", info.get("caption"))
        clips.append(StoredClip(path, name, clip_id=str(info.get("clip_id") or key),
                                caption=caption if isinstance(caption, str) and caption else None,
                                video_id=info.get("video_id"), aesthetic=number(info.get("aesthetic")), error=error))
    if damage is not None:
        clips.append(StoredClip(path, clip_id=f"{Path(path).name}:damaged", error=damage))
    return clips


def protocol_frames(data: bytes | str, clip: StoredClip, label: str, protocol: VideoProtocol,
                    transform: VideoTransform) -> dict[str, torch.Tensor]:
    """A clip decoded by the evaluation protocol and resized by ``transform`` (a :data:`FrameSampler`)."""
    p = protocol
    frames = read_video(data, p.num_frames, p.sampling, backend=p.backend, rng=clip.row, name=label)
    return {"video": transform(frames)}


def embeddings_schema(dim: int) -> pa.Schema:
    """The columns of an embedding shard; embeddings are fixed-size float32 lists of the model's width."""
    vector = pa.list_(pa.float32(), dim)
    return pa.schema([("clip_id", pa.string()), ("video_id", pa.string()), ("aesthetic", pa.float32()),
                      ("video_embedding", vector), ("text_embedding", vector), ("similarity", pa.float32()),
                      ("error", pa.string())])


class Embedder:
    """The model and protocol of a run; :meth:`__call__` embeds one shard's clips into a table."""

    def __init__(self, model: ViCLIP, protocol: VideoProtocol, device: torch.device, cfg: EmbedConfig) -> None:
        self.model, self.protocol, self.device, self.cfg = model.eval(), protocol, device, cfg
        self.precision = cfg.precision if cfg.precision != "auto" else "bf16" if device.type == "cuda" else "fp32"
        self.transform = protocol_transform(protocol)

    def __call__(self, clips: Sequence[StoredClip]) -> tuple[pa.Table, dict]:
        started = time.time()
        clips = [dataclasses.replace(c, row=i) for i, c in enumerate(clips)]  # rows of this shard's table
        dim = self.model.cfg.embed_dim
        video = torch.zeros(len(clips), dim)
        errors: dict[int, str] = {}
        sample = partial(protocol_frames, protocol=self.protocol, transform=self.transform)
        for ok in decoded_batches(ClipFrames(clips, sample), self.cfg.batch_size, self.cfg.workers, errors,
                                  lambda n: None):
            rows = torch.tensor([row for row, _ in ok], dtype=torch.long)
            video[rows] = encode_video_batch(self.model, torch.stack([f["video"] for _, f in ok]), self.transform,
                                             self.device, self.precision)
        captioned = [i for i, c in enumerate(clips) if c.caption and i not in errors]
        text = torch.zeros(len(clips), dim)
        for start in range(0, len(captioned), self.cfg.text_batch_size):
            rows = captioned[start:start + self.cfg.text_batch_size]
            text[rows] = encode_text_batch(self.model, [clips[i].caption for i in rows], self.device,
                                           self.precision, self.cfg.official_cleaning)
        sims = torch.nn.functional.cosine_similarity(video, text, dim=-1)
        has_text = set(captioned)
        table = pa.Table.from_pylist([
            {"clip_id": c.clip_id, "video_id": c.video_id, "aesthetic": c.aesthetic,
             "video_embedding": None if i in errors else video[i].tolist(),
             "text_embedding": text[i].tolist() if i in has_text else None,
             "similarity": float(sims[i]) if i in has_text else None, "error": errors.get(i)}
            for i, c in enumerate(clips)], schema=embeddings_schema(dim))
        stats = {"clips": len(clips), "embedded": len(clips) - len(errors), "failed": len(errors),
                 "with_caption": len(captioned), "seconds": round(time.time() - started, 3)}
        return table, stats


@dataclass(frozen=True)
class EmbedShards:
    """The embedding job's ``make_runner``: loads the model once (in this process, or once per Ray actor),
    then embeds shard after shard, each ended by its done mark."""

    out_dir: str
    cfg: EmbedConfig
    protocol: VideoProtocol

    def __call__(self) -> ShardRunner:
        cfg, out = self.cfg, StageDir(self.out_dir)
        device = pick_device(cfg.device)  # an actor's GPU, or this rank's under torchrun
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = load_model(cfg.model, checkpoint=Path(cfg.checkpoint), device=device, num_frames=cfg.num_frames)
        embed = Embedder(model, self.protocol, device, cfg)

        def run(shard: int, unit: Unit, advance: Advance) -> dict:
            name = shard_name(shard)
            out.remove_leftovers(f".{name}.parquet.tmp*")  # a killed run's partial table
            table, stats = embed(unit_clips(unit))
            with atomic_path(out.path(f"{name}.parquet")) as tmp:
                pq.write_table(table, tmp)
            atomic_write(out.path(stats_name(shard)), json.dumps({"shard": shard, "input": unit.path, **stats}))
            return stats
        return run


def run_embedding(inputs: Sequence[str], out_dir: str | os.PathLike, cfg: EmbedConfig, task: int = 0,
                  num_tasks: int = 1, progress: bool = True, engine: Engine | None = None) -> dict:
    """Embed every pending shard this worker owns on ``engine`` (default: this process); returns counts
    (shards done, skipped, clips, failed). The settings are checked before any model loads, so a
    finished or mismatched run loads none."""
    if not 0 <= task < num_tasks:
        raise ConfigError(f"--task must be in [0, num_tasks), got task={task}, num_tasks={num_tasks}")
    if not Path(cfg.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {cfg.checkpoint}")
    init_from_env(pick_device(cfg.device))
    rank, world_size = world()
    worker, workers = task * world_size + rank, num_tasks * world_size
    units = plan_units(inputs, cfg.input_kind, cfg.clips_per_shard)
    out = StageDir(out_dir)
    mine = [s for s in range(len(units)) if s % workers == worker]
    pending = [s for s in mine if not out.exists(stats_name(s))]
    summary = {"shards": len(mine), "skipped": len(mine) - len(pending), "done": 0, "clips": 0, "failed": 0}
    weights = resolve_pretrained(cfg.checkpoint)
    image_size = model_config(cfg.model, weights, num_frames=cfg.num_frames).image_size
    protocol = VideoProtocol(num_frames=cfg.num_frames, sampling=cfg.sampling, image_size=image_size,
                             backend=cfg.backend)
    record_or_check_settings(out, {**cfg.record(file_sha256(weights), protocol),
                                   "inputs": [str(Path(i).resolve()) for i in inputs], "units": len(units)})
    job = ShardJob(EmbedShards(out.url, cfg, protocol), {s: units[s] for s in pending}, unit="clip", model=True)
    with progress_bar(total=len(pending), desc=f"worker {worker}/{workers}", unit="shard", enabled=progress) as bar:
        for _, stats in (engine or LocalEngine()).run(job, lambda shard, n: None):
            bar.update(1)
            summary["done"] += 1
            summary["clips"] += stats["clips"]
            summary["failed"] += stats["failed"]
    return summary
