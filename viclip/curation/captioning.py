"""Multiscale video captions (paper section 3.2, appendix F.1).

- coarse: an image captioner on the clip's middle frame (BLIP-2 in the paper);
- fine: the captioner on frames at a low rate (``fine_fps``, 1 fps; Tag2Text in the paper), the
  frame captions fused into one video caption by a text summariser (T5 in the paper);
- caption: the summariser over the coarse caption and the frame captions together. These are the
  "fused captions, combining both coarse- and fine-level ones" of InternVid-2M (F.1), which the
  language model writes from "frame-wise captions from BLIP2 and tag2text".

All three are kept (``caption_coarse``, ``caption_fine``, ``caption``) with the frame captions
(``frame_captions``). Models are callables built from a registry by a :class:`ModelSpec`: the
built-in ``hf`` kinds load any ``transformers`` image-to-text or seq2seq model from a local path or
a hub id (never downloaded here: pre-fetch them), and ``"package.module:factory"`` plugs in others.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from viclip.curation.engine import Engine
from viclip.curation.frames import ClipFrames, StoredClip, decoded_batches, kept_clips, with_result_columns
from viclip.curation.own_captions import CaptionFile
from viclip.curation.stage_configs import DTYPES, CaptionConfig, ModelSpec
from viclip.curation.stages import StageSummary, TableShard, run_table_stage
from viclip.data.video import read_video
from viclip.distributed import pick_device
from viclip.errors import ConfigError

# uint8 [H, W, 3] images -> one caption each, same order
ImageCaptioner = Callable[[Sequence[np.ndarray]], list[str]]
# texts -> one summary each, same order
Summariser = Callable[[Sequence[str]], list[str]]
CAPTION_COLUMNS = ("caption_coarse", "caption_fine", "frame_captions", "caption")


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = pick_device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return dev, getattr(torch, dtype)


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class HFImageCaptioner:
    """A ``transformers`` image-to-text model (BLIP-2, BLIP, GIT, ...) with its processor, batched."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, batch_size: int = 64) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec, self.device, self.dtype, self.batch_size = spec, device, dtype, batch_size
        self.processor = AutoProcessor.from_pretrained(spec.path)
        self.model = AutoModelForImageTextToText.from_pretrained(spec.path, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[str]:
        out: list[str] = []
        for chunk in _chunks(list(images), self.batch_size):
            inputs = self.processor(images=list(chunk), text=[self.spec.prompt] * len(chunk), return_tensors="pt")
            inputs = {k: v.to(self.device, self.dtype if v.is_floating_point() else None) for k, v in inputs.items()}
            ids = self.model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens,
                                      num_beams=self.spec.num_beams, do_sample=False)
            if not self.model.config.is_encoder_decoder:  # decoder-only LMs return the prompt first
                ids = ids[:, inputs["input_ids"].shape[1]:]
            out += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out


class HFSummariser:
    """A ``transformers`` seq2seq model (T5 family) that condenses texts, batched, prompt as task prefix."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, batch_size: int = 64) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.spec, self.device, self.batch_size = spec, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(spec.path, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        for chunk in _chunks([self.spec.prompt + t for t in texts], self.batch_size):
            inputs = self.tokenizer(list(chunk), return_tensors="pt", padding=True, truncation=True, max_length=512)
            ids = self.model.generate(**inputs.to(self.device), max_new_tokens=self.spec.max_new_tokens,
                                      num_beams=self.spec.num_beams, do_sample=False)
            out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


CAPTIONERS: dict[str, Callable[..., ImageCaptioner]] = {"hf": HFImageCaptioner}
SUMMARISERS: dict[str, Callable[..., Summariser]] = {"hf": HFSummariser}


def plugin_factory(kind: str, option: str) -> Callable:
    """The ``factory`` of a ``package.module:factory`` kind; a module in the working directory is found
    without PYTHONPATH (console scripts do not put the working directory on ``sys.path``)."""
    module, _, name = kind.partition(":")
    top = module.split(".")[0]
    if os.getcwd() not in sys.path and (Path(f"{top}.py").is_file() or Path(top).is_dir()):
        sys.path.append(os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{option} {kind}: no module {e.name!r} (in the working directory or installed)") from None
    except AttributeError:
        raise ConfigError(f"{option} {kind}: module {module!r} has no {name!r}") from None
    return factory


def build_captioner(registry: dict[str, Callable], spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                    batch_size: int, option: str = "--coarse-kind") -> Callable:
    """``factory(spec, device, dtype, batch_size)`` from the registry or from ``module:factory``."""
    if ":" in spec.kind:
        factory = plugin_factory(spec.kind, option)
    elif spec.kind in registry:
        factory = registry[spec.kind]
    else:
        raise ConfigError(f"{option}: unknown model kind {spec.kind!r}: use one of {sorted(registry)} or "
                          "'package.module:factory'")
    return factory(spec, device, dtype, batch_size)


def check_models(cfg: CaptionConfig) -> None:
    """Before any work and without the network: each ``hf`` model is a local directory or in the Hugging Face
    cache, each plugin's factory imports. Otherwise one line naming the model, the cache and the options."""
    from huggingface_hub import constants, try_to_load_from_cache

    for field, spec in (("coarse", cfg.coarse), ("fine", cfg.fine), ("summariser", cfg.summariser)):
        if spec is None:
            continue
        if ":" in spec.kind:
            plugin_factory(spec.kind, f"--{field}-kind")
        elif Path(spec.path).is_dir():
            if not (Path(spec.path) / "config.json").is_file():
                raise ConfigError(f"--{field}-path {spec.path}: a model directory needs a config.json")
        elif not isinstance(try_to_load_from_cache(spec.path, "config.json"), str):
            raise ConfigError(
                f"--{field}-path {spec.path}: not a local directory and not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); nothing is downloaded here: fetch it first "
                f"(huggingface-cli download {spec.path}), give a local directory with --{field}-path, or "
                f"another model with --{field}-kind package.module:factory (docs/captioners.md); captions of "
                f"your own need no model: --captions FILE")


def fine_frame_count(duration: float, fps: float, max_frames: int) -> int:
    """Frames captioned at ``fps`` over the clip (at least one, at most ``max_frames``)."""
    return int(min(max(round(duration * fps), 1), max_frames))


def sample_caption_frames(data: bytes | str, clip: StoredClip, label: str, fine_fps: float, max_fine_frames: int,
                          frame_size: int) -> dict[str, torch.Tensor]:
    """The middle frame (coarse scale) and frames at ``fine_fps`` (fine scale) of one clip."""
    k = fine_frame_count(clip.duration, fine_fps, max_fine_frames)
    return {"middle": read_video(data, num_frames=1, sampling="middle", size=frame_size, name=label),
            "fine": read_video(data, num_frames=k, sampling="middle", size=frame_size, name=label)}


def summary_input(captions: Sequence[str]) -> str:
    """Distinct non-empty captions in order, joined as sentences (frame captions repeat a lot)."""
    return ". ".join(dict.fromkeys(c.strip().rstrip(".") for c in captions if c and c.strip()))


class Captioner:
    """The caption stage for one shard: decode, caption, summarise, add the caption columns."""

    def __init__(self, cfg: CaptionConfig, coarse: ImageCaptioner, fine: ImageCaptioner | None,
                 summariser: Summariser) -> None:
        self.cfg, self.coarse, self.fine, self.summariser = cfg, coarse, fine or coarse, summariser

    @classmethod
    def from_config(cls, cfg: CaptionConfig) -> Captioner:
        device, dtype = resolve_device(cfg.device, cfg.dtype)
        coarse = build_captioner(CAPTIONERS, cfg.coarse, device, dtype, cfg.images_per_batch)
        fine = (build_captioner(CAPTIONERS, cfg.fine, device, dtype, cfg.images_per_batch, "--fine-kind")
                if cfg.fine else None)
        return cls(cfg, coarse, fine, build_captioner(SUMMARISERS, cfg.summariser, device, dtype,
                                                      cfg.texts_per_batch, "--summariser-kind"))

    def caption_batch(self, middles: list[np.ndarray], frames: list[list[np.ndarray]]) -> list[tuple]:
        """(coarse, fine, frame captions, caption) per clip."""
        coarse = self.coarse(middles)
        flat = self.fine([f for clip in frames for f in clip])
        per_clip, start = [], 0
        for clip in frames:
            per_clip.append(flat[start:start + len(clip)])
            start += len(clip)
        texts = [summary_input(fc) for fc in per_clip] + [summary_input([c, *fc]) for c, fc in zip(coarse, per_clip)]
        nonempty = [i for i, t in enumerate(texts) if t]
        summaries = [""] * len(texts)
        for i, s in zip(nonempty, self.summariser([texts[i] for i in nonempty])):
            summaries[i] = s
        n = len(frames)
        return [(coarse[i], summaries[i], per_clip[i], summaries[n + i]) for i in range(n)]

    def __call__(self, shard: TableShard) -> tuple[pa.Table, dict]:
        started = time.time()
        cfg, table = self.cfg, shard.table
        clips = kept_clips(table, shard.clips_dir)
        sampler = partial(sample_caption_frames, fine_fps=cfg.fine_fps, max_fine_frames=cfg.max_fine_frames,
                          frame_size=cfg.frame_size)
        results: dict[int, tuple] = {}
        errors: dict[int, str] = {}
        frames_captioned = 0
        for ok in decoded_batches(ClipFrames(clips, sampler), cfg.clips_per_batch, cfg.workers,
                                  errors, shard.advance):
            middles = [f["middle"][0].numpy() for _, f in ok]
            frames = [list(f["fine"].numpy()) for _, f in ok]
            frames_captioned += sum(len(x) for x in frames)
            results.update(zip([row for row, _ in ok], self.caption_batch(middles, frames)))
        stats = {"clips": len(clips), "captioned": len(results), "failed": len(errors),
                 "frames_captioned": frames_captioned, "seconds": time.time() - started}
        return add_caption_columns(table, results, errors), stats


def add_caption_columns(table: pa.Table, results: dict[int, tuple], errors: dict[int, str]) -> pa.Table:
    """The table with the caption columns set for captioned rows (others keep their caption, if any)."""
    n = len(table)
    old = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * n
    columns = {
        "caption_coarse": pa.array([results[i][0] if i in results else None for i in range(n)], pa.string()),
        "caption_fine": pa.array([results[i][1] if i in results else None for i in range(n)], pa.string()),
        "frame_captions": pa.array([results[i][2] if i in results else None for i in range(n)], pa.list_(pa.string())),
        "caption": pa.array([results[i][3] if i in results else old[i] for i in range(n)], pa.string()),
    }
    return with_result_columns(table, columns, errors)


class FileCaptions:
    """The caption stage from a file of one's own captions (:mod:`viclip.curation.own_captions`), no models."""

    def __init__(self, captions: CaptionFile) -> None:
        self.captions = captions

    def __call__(self, shard: TableShard) -> tuple[pa.Table, dict]:
        table, matched = self.captions.join(shard.table)
        kept = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "kept"]
        captions = table.column("caption").to_pylist()
        shard.advance(len(kept))
        return table, {"clips": len(kept), "captioned": sum(bool(captions[i]) for i in kept), "from_file": matched}


def run_captioning(in_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: CaptionConfig,
                   captioner: Captioner | None = None, task: int = 0, num_tasks: int = 1,
                   progress: bool = True, engine: Engine | None = None, captions: str | None = None) -> StageSummary:
    """Caption every finished shard of ``in_dir`` into ``out_dir`` (resumable; see ``run_table_stage``,
    which loads the models only when a shard needs them, after :func:`check_models` found them all).
    ``captions``: a file of captions of one's own joined instead (no models run)."""
    if captions is not None:
        joined = CaptionFile(captions)  # read once; a bad file fails here, before config.json is written
        record = {"stage": "caption", "captions_file": str(Path(captions).resolve()),
                  "captions_sha256": hashlib.sha256(Path(captions).read_bytes()).hexdigest()}
        return run_table_stage(in_dir, out_dir, lambda: FileCaptions(joined), record, task=task,
                               num_tasks=num_tasks, progress=progress, engine=engine)
    if captioner is None:
        check_models(cfg)
    return run_table_stage(
        in_dir, out_dir, lambda: captioner if captioner is not None else Captioner.from_config(cfg),
        {"stage": "caption", "config": cfg.record()}, task=task, num_tasks=num_tasks, progress=progress,
        engine=engine)
