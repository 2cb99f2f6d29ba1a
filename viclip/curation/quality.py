"""Per-clip aesthetic and clip-caption similarity scores (paper section 3.3, appendix B).

- aesthetic: the LAION aesthetic predictor (V1 linear head or the V2 "improved" MLP) on
  L2-normalised CLIP ViT-L/14 image features of ``aesthetic_frames`` (4) uniformly sampled frames;
  the clip's score is the maximum, the per-frame scores are kept in ``aesthetic_frames``;
- clip_text_sim: the raw cosine between a video embedding and the clip's caption embedding, from
  ViCLIP (``viclip.load_model``) or from CLIP with the frame features averaged; the scorer's id is
  written to ``clip_text_model`` so scores of different models are never mixed up unknowingly.

Weights come from local files only (nothing is downloaded).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from viclip.curation.captioning import resolve_device
from viclip.curation.engine import Engine
from viclip.curation.frames import ClipFrames, StoredClip, decoded_batches, kept_clips, with_result_columns
from viclip.curation.stage_configs import ScoreConfig
from viclip.curation.stages import StageSummary, TableShard, run_table_stage
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video
from viclip.model import load_model, tokenize

SCORE_COLUMNS = ("aesthetic", "aesthetic_frames", "clip_text_sim", "clip_text_model")


class AestheticHead(nn.Module):
    """LAION aesthetic predictor on normalised CLIP image features.

    V1 (``sa_0_4_vit_l_14_linear.pth``) is one ``Linear(d, 1)`` (keys ``weight``, ``bias``). V2
    (``sac+logos+ava1-l14-linearMSE.pth``) is ``layers = Sequential(Linear(d, 1024), Dropout,
    Linear(1024, 128), Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1))`` without
    activations, so its keys are ``layers.{0,2,4,6,7}.{weight,bias}``.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], source: str = "<state dict>") -> None:
        super().__init__()
        sd = state_dict.get("state_dict", state_dict)
        if set(sd) == {"weight", "bias"}:
            self.version = "v1"
            self.layers = nn.Sequential(nn.Linear(sd["weight"].shape[1], 1))
            sd = {f"layers.0.{k}": v for k, v in sd.items()}
        elif {f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)} <= set(sd):
            self.version = "v2"
            w = [sd[f"layers.{i}.weight"] for i in (0, 2, 4, 6, 7)]
            self.layers = nn.Sequential(nn.Linear(w[0].shape[1], w[0].shape[0]), nn.Dropout(0.2),
                                        nn.Linear(w[1].shape[1], w[1].shape[0]), nn.Dropout(0.2),
                                        nn.Linear(w[2].shape[1], w[2].shape[0]), nn.Dropout(0.1),
                                        nn.Linear(w[3].shape[1], w[3].shape[0]), nn.Linear(w[4].shape[1], 1))
        else:
            raise KeyError(f"{source}: not a LAION aesthetic head (expected keys weight/bias or "
                           f"layers.0/2/4/6/7.*), got {sorted(sd)[:6]}")
        self.load_state_dict(sd)
        self.eval()

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``[N, d]`` -> scores ``[N]``."""
        return self.layers(F.normalize(features.float(), dim=-1)).squeeze(-1)


def load_aesthetic_head(path: str | os.PathLike) -> AestheticHead:
    if not Path(path).is_file():
        raise FileNotFoundError(f"aesthetic head weights not found: {path}")
    return AestheticHead(torch.load(path, map_location="cpu", weights_only=True), source=str(path))


def clip_preprocess(frames: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """CLIP's eval transform on uint8 ``[N, H, W, 3]``: short side to ``size`` (bicubic), centre crop, normalise."""
    x = TF.resize(frames.permute(0, 3, 1, 2), size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size]).float().div_(255)
    return TF.normalize(x, list(mean), list(std))


def sample_score_frames(data: bytes | str, clip: StoredClip, label: str, clip_frames: int, viclip_frames: int,
                        frame_size: int) -> dict[str, torch.Tensor]:
    """Uniformly sampled frames for CLIP (aesthetic, frame-averaged similarity) and for ViCLIP."""
    out = {}
    if clip_frames:
        out["clip"] = read_video(data, num_frames=clip_frames, sampling="middle", size=frame_size, name=label)
    if viclip_frames:
        out["viclip"] = read_video(data, num_frames=viclip_frames, sampling="middle", size=frame_size, name=label)
    return out


class Scorer:
    """The score stage for one shard: decode, embed, score, add the score columns."""

    def __init__(self, cfg: ScoreConfig, clip: nn.Module | None = None, clip_tokenizer=None,
                 head: AestheticHead | None = None, viclip: nn.Module | None = None) -> None:
        self.cfg = cfg
        self.device, self.dtype = resolve_device(cfg.device, cfg.dtype)
        self.clip, self.clip_tokenizer, self.head, self.viclip = clip, clip_tokenizer, head, viclip
        for m in (clip, head, viclip):
            if m is not None:
                m.to(self.device).eval()
        if clip is not None:
            pre = clip.visual.preprocess_cfg
            self.clip_size, self.clip_mean, self.clip_std = pre["size"][0], pre["mean"], pre["std"]
        if head is not None and clip is not None:
            dim = clip.visual.output_dim
            if head.input_dim != dim:
                raise ValueError(f"aesthetic head expects {head.input_dim}-d features, {cfg.clip_model} gives {dim}")
        self.model_id = cfg.similarity_id()
        if viclip is not None:
            self.viclip_transform = VideoTransform(train=False, image_size=viclip.cfg.image_size)

    @classmethod
    def from_config(cls, cfg: ScoreConfig) -> Scorer:
        import open_clip

        clip = tokenizer = head = viclip = None
        if cfg.clip_weights:
            if not Path(cfg.clip_weights).is_file():
                raise FileNotFoundError(f"CLIP weights not found: {cfg.clip_weights}")
            clip = open_clip.create_model(cfg.clip_model, pretrained=cfg.clip_weights, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        if cfg.aesthetic_head:
            head = load_aesthetic_head(cfg.aesthetic_head)
        if cfg.similarity == "viclip":
            viclip = load_model(cfg.viclip_model, checkpoint=cfg.viclip_checkpoint)
        return cls(cfg, clip, tokenizer, head, viclip)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.inference_mode()
    def score_batch(self, frames: list[dict[str, torch.Tensor]], captions: list[str | None]
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-frame aesthetic scores ``[B, F]`` and similarities ``[B]`` (NaN where a caption is missing)."""
        aesthetic = sims = None
        clip_video = None
        if self.clip is not None and "clip" in frames[0]:
            x = torch.stack([f["clip"] for f in frames]).to(self.device)  # [B, F, H, W, 3]
            b, n = x.shape[:2]
            x = clip_preprocess(x.flatten(0, 1), self.clip_size, self.clip_mean, self.clip_std)
            with self._autocast():
                feats = self.clip.encode_image(x).float()
            if self.head is not None:
                aesthetic = self.head(feats).view(b, n).cpu().numpy()
            clip_video = F.normalize(F.normalize(feats, dim=-1).view(b, n, -1).mean(1), dim=-1)
        has_text = [i for i, c in enumerate(captions) if c]
        if self.cfg.similarity != "none":
            sims = np.full(len(frames), np.nan, dtype=np.float32)
        if self.cfg.similarity == "none" or not has_text:
            return aesthetic, sims
        texts = [captions[i] for i in has_text]
        with self._autocast():
            if self.cfg.similarity == "viclip":
                video = self.viclip_transform(torch.stack([frames[i]["viclip"] for i in has_text]).to(self.device))
                v = F.normalize(self.viclip.encode_video(video).float(), dim=-1)
                t = F.normalize(self.viclip.encode_text(tokenize(texts).to(self.device)).float(), dim=-1)
            else:
                v = clip_video[has_text]
                t = F.normalize(self.clip.encode_text(self.clip_tokenizer(texts).to(self.device)).float(), dim=-1)
        sims[has_text] = (v * t).sum(-1).cpu().numpy()
        return aesthetic, sims

    def __call__(self, shard: TableShard) -> tuple[pa.Table, dict]:
        started = time.time()
        cfg, table = self.cfg, shard.table
        clips = kept_clips(table, shard.clips_dir)
        captions = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * len(table)
        need_clip = self.clip is not None and (self.head is not None or cfg.similarity == "clip")
        sampler = partial(sample_score_frames, clip_frames=cfg.aesthetic_frames if need_clip else 0,
                          viclip_frames=self.viclip.cfg.num_frames if self.viclip is not None else 0,
                          frame_size=cfg.frame_size)
        aesthetic: dict[int, np.ndarray] = {}
        sims: dict[int, float] = {}
        errors: dict[int, str] = {}
        for ok in decoded_batches(ClipFrames(clips, sampler), cfg.clips_per_batch, cfg.workers,
                                  errors, shard.advance):
            rows = [row for row, _ in ok]
            a, s = self.score_batch([f for _, f in ok], [captions[r] for r in rows])
            if a is not None:
                aesthetic.update(zip(rows, a))
            if s is not None:
                sims.update((r, float(v)) for r, v in zip(rows, s) if not np.isnan(v))
        stats = {"clips": len(clips), "scored": len(clips) - len(errors), "failed": len(errors),
                 "with_similarity": len(sims), "seconds": time.time() - started}
        return add_score_columns(table, aesthetic, sims, errors, self.model_id), stats


def add_score_columns(table: pa.Table, aesthetic: dict[int, np.ndarray], sims: dict[int, float],
                      errors: dict[int, str], model_id: str | None) -> pa.Table:
    """The table with ``aesthetic`` (max over frames), ``aesthetic_frames``, ``clip_text_sim`` and its model."""
    n = len(table)
    columns = {}
    if aesthetic:
        columns["aesthetic"] = pa.array([float(aesthetic[i].max()) if i in aesthetic else None for i in range(n)],
                                        pa.float32())
        columns["aesthetic_frames"] = pa.array([aesthetic[i].tolist() if i in aesthetic else None for i in range(n)],
                                               pa.list_(pa.float32()))
    if model_id is not None:
        columns["clip_text_sim"] = pa.array([sims.get(i) for i in range(n)], pa.float32())
        columns["clip_text_model"] = pa.array([model_id if i in sims else None for i in range(n)], pa.string())
    return with_result_columns(table, columns, errors)


def run_scoring(in_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: ScoreConfig,
                scorer: Scorer | None = None, task: int = 0, num_tasks: int = 1,
                progress: bool = True, engine: Engine | None = None) -> StageSummary:
    """Score every finished shard of ``in_dir`` into ``out_dir`` (resumable; see ``run_table_stage``)."""
    return run_table_stage(
        in_dir, out_dir, lambda: scorer if scorer is not None else Scorer.from_config(cfg),
        {"stage": "score", "config": cfg.record()}, task=task, num_tasks=num_tasks, progress=progress,
        engine=engine)
