"""The config dataclasses of the curation stages whose work loads torch: collect, caption, score, embed, dedup.

Torch-free, so each tool builds its options (and answers ``--help``) without loading model code; the
stages' modules (collect, captioning, quality, embeddings, dedup, semdedup) take these configs and do
the work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from viclip.errors import ConfigError
from viclip.eval.protocol import VideoProtocol


@dataclass(frozen=True)
class CollectConfig:
    """How many results each query asks for and keeps; recorded in config.json with the query list."""

    results_per_query: int = 100  # asked of the search (more than per_query: some are excluded or taken)
    per_query: int = 50           # videos kept per query at most, after exclusion and dedup
    languages: tuple[str, ...] = ("en", "zh")  # of the release's queries.jsonl
    queries_per_shard: int = 100

    def __post_init__(self) -> None:
        for name in ("results_per_query", "per_query", "queries_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 on CUDA, float32 on CPU


@dataclass(frozen=True)
class ModelSpec:
    """Which model, and how it generates (all of this changes the output, so it is recorded)."""

    kind: str                     # a registry name or "package.module:factory"
    path: str                     # local directory or hub id
    prompt: str = ""              # captioner: text prompt; summariser: task prefix
    max_new_tokens: int = 30
    num_beams: int = 1


@dataclass(frozen=True)
class CaptionConfig:
    """The captioning models and how they run (``record()`` is what decides the captions)."""

    coarse: ModelSpec = ModelSpec("hf", "Salesforce/blip2-opt-2.7b")
    fine: ModelSpec | None = None  # frame captioner; None: the coarse captioner captions the frames too
    summariser: ModelSpec = ModelSpec("hf", "google-t5/t5-base", prompt="summarize: ", max_new_tokens=40,
                                      num_beams=4)
    fine_fps: float = 1.0
    max_fine_frames: int = 16     # a 2-minute clip gets 16 frame captions, not 120
    frame_size: int = 224         # decoded short side; the processors resize again
    dtype: str = "auto"           # auto: bfloat16 on CUDA, float32 on CPU
    # how the work is split; not part of the output
    device: str = "auto"
    images_per_batch: int = 64
    texts_per_batch: int = 64
    clips_per_batch: int = 16
    workers: int = 4

    def record(self) -> dict:
        """The fields that decide the captions (checked when a run resumes)."""
        runtime = {"device", "images_per_batch", "texts_per_batch", "clips_per_batch", "workers"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in runtime}


SIMILARITY_MODELS = ("viclip", "clip", "none")


@dataclass(frozen=True)
class ScoreConfig:
    """The scoring models and how they run (``record()`` is what decides the scores)."""

    clip_model: str = "ViT-L-14-quickgelu"  # open_clip architecture (OpenAI weights use QuickGELU)
    clip_weights: str | None = None          # open_clip state dict of that architecture
    aesthetic_head: str | None = None        # LAION V1/V2 head weights; None: no aesthetic score
    aesthetic_frames: int = 4
    similarity: str = "viclip"               # viclip | clip | none
    viclip_checkpoint: str | None = None
    viclip_model: str | None = None          # size name; None: read from the checkpoint
    model_id: str | None = None              # clip_text_model value; None: derived from the model and weights
    frame_size: int = 256                    # decoded short side (the transforms resize again)
    dtype: str = "auto"
    # how the work is split; not part of the output
    device: str = "auto"
    clips_per_batch: int = 32
    workers: int = 4

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITY_MODELS:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITY_MODELS)}; got {self.similarity!r}")
        if self.similarity == "viclip" and not self.viclip_checkpoint:
            raise ValueError("similarity='viclip' needs viclip_checkpoint (or choose similarity='clip' or 'none')")
        if (self.aesthetic_head or self.similarity == "clip") and not self.clip_weights:
            raise ValueError("the aesthetic score and similarity='clip' need clip_weights (an open_clip state dict)")
        if not self.aesthetic_head and self.similarity == "none":
            raise ValueError("nothing to score: give aesthetic_head and/or a similarity model")

    def record(self) -> dict:
        runtime = {"device", "clips_per_batch", "workers"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in runtime}

    def similarity_id(self) -> str | None:
        if self.model_id or self.similarity == "none":
            return self.model_id
        if self.similarity == "viclip":
            return f"viclip:{Path(self.viclip_checkpoint).name}"
        return f"open_clip:{self.clip_model}:{Path(self.clip_weights).name}:avg{self.aesthetic_frames}"


INPUT_KINDS = ("auto", "tars", "tables", "folder")


@dataclass(frozen=True)
class EmbedConfig:
    """What determines the embeddings (recorded in ``config.json``), and how fast they are made (not recorded).

    ``num_frames``/``sampling`` default to the official evaluation protocol; ``precision`` ``auto`` is bf16
    autocast on a GPU and fp32 on the CPU.
    """

    checkpoint: str
    model: str | None = None  # a registered size; by default read from the checkpoint
    num_frames: int = VideoProtocol.num_frames
    sampling: str = VideoProtocol.sampling
    official_cleaning: bool = True
    precision: str = "auto"
    input_kind: str = "auto"
    clips_per_shard: int = 1000  # folders only: tars and tables are a shard each
    device: str = "auto"
    batch_size: int = 32
    text_batch_size: int = 256
    workers: int = 4
    backend: str = "auto"

    def record(self, sha256: str, protocol: VideoProtocol) -> dict:
        """The output-changing settings: the checkpoint's content, the protocol, the text cleaning."""
        return {"checkpoint_sha256": sha256, "model": self.model, "protocol": dataclasses.asdict(protocol),
                "official_cleaning": self.official_cleaning, "input_kind": self.input_kind,
                "clips_per_shard": self.clips_per_shard}


KEEP_BY = ("first", "aesthetic", "similarity")


@dataclass(frozen=True)
class DedupConfig:
    """Thresholds (cosine of normalised ViCLIP video embeddings) and which clip of a group is kept."""

    threshold: float = 0.95
    keep_by: str = "first"
    eval_annotations: tuple[str, ...] = ()  # evaluation annotation files whose source ids are excluded
    eval_embeddings: tuple[str, ...] = ()  # embed_clips outputs of evaluation videos
    eval_threshold: float = 0.95
    block_size: int = 8192
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.keep_by not in KEEP_BY:
            raise ConfigError(f"--keep-by must be one of {KEEP_BY}, got {self.keep_by!r}")
        for name in ("threshold", "eval_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} is a cosine similarity in [-1, 1], "
                                  f"got {getattr(self, name)}")
        if self.block_size < 1:
            raise ConfigError(f"--block-size must be >= 1, got {self.block_size}")


@dataclass(frozen=True)
class SemDedupConfig:
    """k-means clusters searched exactly one by one (``--method semdedup``); defaults chosen by measurement."""

    clusters: int = 0             # k; 0: sqrt(N * (spill - 1/2)), the k that balances assignment and search
    spill: int = 2                # a row is searched in its nearest `spill` clusters (1: its own only)
    sample_per_cluster: int = 64  # k-means training rows per centroid
    kmeans_iterations: int = 20
    seed: int = 0
    workers: int = 1              # local processes searching clusters (each rank of a torchrun run has its own)
    work_dir: str | None = None   # centroids, assignments, per-cluster pairs; default OUT.semdedup

    def __post_init__(self) -> None:
        for name, low in (("clusters", 0), ("spill", 1), ("sample_per_cluster", 39), ("kmeans_iterations", 1),
                          ("workers", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
