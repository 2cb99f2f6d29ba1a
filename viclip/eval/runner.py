"""One evaluation job: ``eval.py task=... checkpoint=...`` composes a config and calls :func:`evaluate`.

The flow is linear: check the task's paths, resolve and fingerprint the checkpoint, build the
model (optionally wise-ft blended), embed videos and texts (cached, split over ranks), score by
the task's kind, then rank 0 writes the results JSON and prints the table.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from viclip.data.video import SAMPLINGS
from viclip.distributed import broadcast_object, fit_workers, init_from_env, pick_device, world
from viclip.errors import ConfigError, DataError
from viclip.eval import linear_probe as lp
from viclip.eval.cache import EmbeddingCache, cache_key, file_identity
from viclip.eval.dual_softmax import dual_softmax
from viclip.eval.embed import embed_texts, embed_videos
from viclip.eval.metrics import retrieval_metrics, topk_accuracy
from viclip.eval.model_loading import WISE_FT_KEEP, file_sha256, resolve_checkpoint, wise_ft
from viclip.eval.protocol import VideoProtocol
from viclip.eval.report import SCHEMA, format_table, write_per_video, write_results
from viclip.eval.score import cosine_per_video, score_summary
from viclip.eval.tasks import EvalSplit, label_task, load_task
from viclip.eval.templates import class_prototypes, class_scores, expand, get_templates
from viclip.eval.views import VIEW_RESIZES, Views, mean_view_scores, view_transform
from viclip.model import load_model, model_name_of
from viclip.model.classifier import classifier_from_checkpoint

log = logging.getLogger(__name__)


def video_protocol(cfg: DictConfig) -> VideoProtocol:
    """``cfg.protocol``'s video fields over the official protocol (:class:`VideoProtocol`'s defaults,
    which a null field keeps); ``image_size`` is left to the caller, as it is the model's."""
    fields = ("num_frames", "sampling", "backend", "antialias", "max_pixels", "view_resize")
    chosen = {f: cfg.protocol[f] for f in fields if cfg.protocol.get(f) is not None}
    if "num_frames" in chosen and (not isinstance(chosen["num_frames"], int) or chosen["num_frames"] < 1):
        raise ConfigError(f"protocol.num_frames must be a whole number >= 1, got {chosen['num_frames']!r}")
    if chosen.get("sampling", "middle") not in SAMPLINGS:
        raise ConfigError(f"protocol.sampling must be one of {', '.join(SAMPLINGS)}, got {chosen['sampling']!r}")
    if chosen.get("view_resize", "official") not in VIEW_RESIZES:
        raise ConfigError(f"protocol.view_resize must be one of {', '.join(VIEW_RESIZES)}, "
                          f"got {chosen['view_resize']!r}")
    views = cfg.protocol.get("views") or task_views(cfg)
    seconds = cfg.protocol.get("max_seconds")  # null: the task's own (DiDeMo's first 30 s); 0: the whole video
    return VideoProtocol(**chosen, views=str(Views.parse(views)),
                         max_seconds=cfg.task.get("max_seconds") if seconds is None else seconds)


def task_views(cfg: DictConfig) -> str:
    """The task's own test views (a fine-tuned task's multi-view protocol), else the single view."""
    return str(Views.parse(cfg.task.get("views")))


def variant_suffix(cfg: DictConfig, kind: str) -> str:
    """Non-default protocol options, in the results' name: ``zeroshot_k400+embed+dsl``."""
    parts = [cfg.preset] if cfg.get("preset") else []  # a named protocol (configs/preset) leads the name
    protocol, official = video_protocol(cfg), VideoProtocol()
    if protocol.num_frames != official.num_frames:
        parts.append(f"f{protocol.num_frames}")
    if protocol.sampling != official.sampling:
        parts.append(protocol.sampling)
    if protocol.views != task_views(cfg):
        parts.append(f"v{protocol.views}")
    if protocol.antialias != official.antialias:
        parts.append("antialias")
    if protocol.view_resize != official.view_resize and Views.parse(protocol.views).crops > 1:
        parts.append(f"views-{protocol.view_resize}")
    if protocol.max_pixels != official.max_pixels:
        parts.append(f"px{protocol.max_pixels}")
    if protocol.max_seconds != cfg.task.get("max_seconds"):
        parts.append(f"s{protocol.max_seconds}")
    if not cfg.protocol.official_cleaning:
        parts.append("rawtext")
    if kind == "zeroshot":
        if cfg.templates.set != "kinetics":
            parts.append(f"tpl-{cfg.templates.set}")
        if cfg.templates.reduce != "sim":
            parts.append(cfg.templates.reduce)
    if kind in ("zeroshot", "retrieval") and cfg.dual_softmax:
        parts.append("dsl")
    if cfg.wise_ft.clip:
        parts.append(f"wiseft{cfg.wise_ft.alpha:g}" + ("" if wise_ft_keep(cfg) == WISE_FT_KEEP else "-keep"))
    if cfg.precision != "fp32":
        parts.append(cfg.precision)
    return "".join(f"+{p}" for p in parts)


def wise_ft_keep(cfg: DictConfig) -> tuple[str, ...]:
    """The tensors wise-ft keeps from the checkpoint: ``wise_ft.keep``, null for the official set."""
    keep = cfg.wise_ft.get("keep")
    return WISE_FT_KEEP if keep is None else tuple(keep)


def _model_choice(cfg: DictConfig) -> str | None:
    # `model=NAME` selects viclip/configs/model/NAME.yaml (a group shared with training): use its name only.
    if cfg.get("model") is None:
        return None
    return cfg.model if isinstance(cfg.model, str) else cfg.model.name


class Evaluator:
    """Holds the model and the caching context for one job."""

    def __init__(self, cfg: DictConfig, device: torch.device, weights: Path, sha: str):
        self.cfg, self.device = cfg, device
        protocol = video_protocol(cfg)
        # the temporal embedding is resampled if the checkpoint was trained with another frame count
        if cfg.task.kind == "finetuned":  # a fine-tuned classifier: the video tower and its head
            self.model = classifier_from_checkpoint(weights, num_frames=protocol.num_frames).to(device).eval()
        else:
            self.model = load_model(_model_choice(cfg), checkpoint=weights, device=device,
                                    num_frames=protocol.num_frames)
        self.wise = None
        if cfg.wise_ft.clip:
            keep = wise_ft_keep(cfg)
            clip_file = wise_ft(self.model, cfg.wise_ft.clip, cfg.wise_ft.alpha, keep)  # a file or an open_clip tag
            self.wise = {"clip": str(cfg.wise_ft.clip), "sha256": file_sha256(clip_file),
                         "alpha": cfg.wise_ft.alpha, "keep": list(keep)}
        self.protocol = dataclasses.replace(protocol, image_size=self.model.cfg.image_size)
        self.cache = EmbeddingCache(cfg.cache_dir if cfg.embedding_cache else None)
        self.model_key = {"checkpoint": sha, "wise_ft": self.wise, "precision": cfg.precision,
                          "config": dataclasses.asdict(self.model.cfg)}
        self.timings = {"video": 0.0, "text": 0.0}

    def _cached(self, kind: str, key: str, compute) -> tuple[dict[str, torch.Tensor], bool]:
        """The entry and whether it came from the cache."""
        # Rank 0 decides hit or miss for all ranks, so a cache on a non-shared disk cannot split them.
        hit = broadcast_object(self.cache.load(kind, key) if world()[0] == 0 else None)
        if hit is not None:
            return hit, True
        out = compute()
        if world()[0] == 0:
            self.cache.save(kind, key, out)
        return out, False

    def _embed(self, records: list) -> dict[str, torch.Tensor]:
        emb, ok = embed_videos(self.model, records, self.protocol, self.device, batch_size=self.cfg.batch_size,
                               num_workers=fit_workers(int(self.cfg.num_workers), self.device.type == "cuda"),
                               precision=self.cfg.precision,
                               progress=bool(self.cfg.progress))
        return {"embeddings": _finite(emb, ok, f"video embeddings of checkpoint {self.cfg.checkpoint}"), "ok": ok}

    def videos(self, split: EvalSplit) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        key = cache_key(**self.model_key, protocol=dataclasses.asdict(self.protocol),
                        videos=file_identity(split.videos))
        out, hit = self._cached("video", key, lambda: self._embed(split.records))
        failed = (~out["ok"]).nonzero().flatten().tolist()
        if hit and failed:  # a failure is never final: retry the videos a cached entry lacks
            retry = self._embed([split.records[i] for i in failed])
            if retry["ok"].any():
                out["embeddings"][failed], out["ok"][failed] = retry["embeddings"], retry["ok"]
                if world()[0] == 0:
                    self.cache.save("video", key, out)
        self.timings["video"] += time.perf_counter() - start
        return out["embeddings"], out["ok"]

    def texts(self, texts: list[str]) -> torch.Tensor:
        start = time.perf_counter()
        cleaning = self.cfg.protocol.official_cleaning
        key = cache_key(**self.model_key, official_cleaning=cleaning, texts=texts)

        def compute():
            emb = embed_texts(self.model, texts, self.device, precision=self.cfg.precision,
                              official_cleaning=cleaning)
            return {"embeddings": _finite(emb, None, f"text embeddings of checkpoint {self.cfg.checkpoint}")}

        out, _ = self._cached("text", key, compute)
        self.timings["text"] += time.perf_counter() - start
        return out["embeddings"]

    @property
    def temp(self) -> float:
        return float(self.model.temp.detach())

    def zeroshot(self, split: EvalSplit) -> tuple[dict, dict]:
        templates = get_templates(self.cfg.templates.set)
        video, ok = self.videos(split)
        prompts = expand(split.class_names, templates)
        protos = class_prototypes(self.texts(prompts), len(templates), self.cfg.templates.reduce)
        scores = mean_view_scores(lambda v: class_scores(v, protos), video[ok])
        if self.cfg.dual_softmax:
            scores = dual_softmax(scores / self.temp)
        labels = torch.tensor([r.label for r in split.records])[ok]
        info = {"num_classes": len(split.class_names), "num_templates": len(templates)}
        return topk_accuracy(scores, labels), {**_counts(ok), **info}

    def retrieval(self, split: EvalSplit) -> tuple[dict, dict]:
        paragraph = bool(self.cfg.task.get("paragraph", False))
        video, ok = self.videos(split)
        kept = [r for r, good in zip(split.records, ok.tolist()) if good]
        # Paragraph mode (DiDeMo, ActivityNet): a video's captions joined into one text, in order.
        texts = [[" ".join(r.captions)] if paragraph else list(r.captions) for r in kept]
        flat = [t for group in texts for t in group]
        text_to_video = torch.tensor([v for v, group in enumerate(texts) for _ in group])
        sims = F.normalize(video[ok], dim=-1) @ F.normalize(self.texts(flat), dim=-1).T  # [V, T] cosine
        if self.cfg.dual_softmax:
            t2v, v2t = dual_softmax(sims.T / self.temp), dual_softmax(sims / self.temp)
        else:
            t2v, v2t = sims.T, sims
        return retrieval_metrics(t2v, v2t, text_to_video), {**_counts(ok), "num_texts": len(flat),
                                                            "paragraph": paragraph}

    def score(self, split: EvalSplit) -> tuple[dict, dict]:
        """ViCLIP score: each video's cosine with its own prompt (viclip.score gives the same numbers)."""
        video, ok = self.videos(split)
        sims = cosine_per_video(video, ok, self.texts([r.captions[0] for r in split.records]))
        metrics, per_video = score_summary(split.records, sims)
        return metrics, {**_counts(ok), "per_video": per_video}

    def finetuned(self, split: EvalSplit) -> tuple[dict, dict]:
        """A fine-tuned classifier: softmax of its head over each view, averaged (UMT's ``merge``)."""
        head = self.model.head
        if head.out_features != len(split.class_names):
            raise ConfigError(f"checkpoint {self.cfg.checkpoint}: its head has {head.out_features} classes, task "
                             f"{self.cfg.task.name} {len(split.class_names)}; fine-tune on this task's classes")
        video, ok = self.videos(split)
        probs = mean_view_scores(lambda v: head(v.to(self.device)).float().softmax(-1).cpu(), video[ok])
        labels = torch.tensor([r.label for r in split.records])[ok]
        return topk_accuracy(probs, labels), {**_counts(ok), "num_classes": len(split.class_names)}

    def linear(self, train: EvalSplit, val: EvalSplit) -> tuple[dict, dict]:
        train_x, train_ok = self.videos(train)
        val_x, val_ok = self.videos(val)
        labels = {name: torch.tensor([r.label for r in s.records]) for name, s in (("train", train), ("val", val))}
        p = self.cfg.linear_probe
        metrics = lp.linear_probe(
            train_x[train_ok].to(self.device), labels["train"][train_ok].to(self.device),
            val_x[val_ok].to(self.device), labels["val"][val_ok].to(self.device), len(val.class_names),
            l2_grid=tuple(p.l2_grid), holdout=p.holdout, seed=p.seed, max_iter=p.max_iter)
        info = {**_counts(val_ok), "num_classes": len(val.class_names),
                "train": {"annotation": train.annotation, "video_root": train.video_root, **_counts(train_ok)}}
        return metrics, info


def _finite(emb: torch.Tensor, ok: torch.Tensor | None, what: str) -> torch.Tensor:
    """``emb`` if its rows (those ``ok`` marks) are finite; NaN or infinity would rank as a perfect match
    (every tie goes against the model, but no comparison with NaN is true), so they end the run."""
    rows = emb if ok is None else emb[ok]
    bad = ~torch.isfinite(rows.reshape(rows.shape[0], -1)).all(dim=1)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} of {rows.shape[0]} are not finite (NaN or infinity); "
                        "the weights are corrupt or overflow at this precision")
    return emb


def _counts(ok: torch.Tensor) -> dict:
    return {"listed": int(ok.numel()), "evaluated": int(ok.sum()), "skipped": int((~ok).sum())}


def evaluate(cfg: DictConfig) -> dict:
    """Run the task in ``cfg`` and return its results (every rank returns them; rank 0 writes them)."""
    start = time.perf_counter()
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_from_env(device)
    rank, world_size = world()
    weights = resolve_checkpoint(cfg.checkpoint)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    task.update(label_task(task))  # a custom task's name, for the results and every message
    splits = load_task(task, cache_dir=cfg.cache_dir)  # fails on a bad path before any model is built
    views = video_protocol(cfg).views
    if Views.parse(views).count > 1 and task["kind"] not in ("zeroshot", "finetuned"):
        raise ConfigError(f"protocol.views={views} applies to zeroshot and finetuned tasks, not to the "
                         f"{task['kind']} task {task['name']}")
    if task["kind"] == "finetuned" and cfg.wise_ft.clip:
        raise ConfigError("wise_ft.clip blends ViCLIP checkpoints; a finetuned task evaluates a classifier")
    sha = broadcast_object(file_sha256(weights) if rank == 0 else None)
    evaluator = Evaluator(cfg, device, weights, sha)
    loaded = time.perf_counter()

    kind = task["kind"]
    if kind == "zeroshot":
        metrics, data = evaluator.zeroshot(splits["eval"])
    elif kind == "retrieval":
        metrics, data = evaluator.retrieval(splits["eval"])
    elif kind == "score":
        metrics, data = evaluator.score(splits["eval"])
    elif kind == "finetuned":
        metrics, data = evaluator.finetuned(splits["eval"])
    else:
        metrics, data = evaluator.linear(splits["train"], splits["eval"])

    chosen = evaluator.protocol
    protocol = {
        **dataclasses.asdict(chosen), "transform": view_transform(Views.parse(chosen.views), chosen.view_resize),
        "official_cleaning": cfg.protocol.official_cleaning, "dual_softmax": bool(cfg.dual_softmax),
        "wise_ft": evaluator.wise, "precision": cfg.precision, "preset": cfg.get("preset"),
    }
    if kind == "zeroshot":
        protocol.update(templates=cfg.templates.set, templates_reduce=cfg.templates.reduce)
    results = {
        "schema": SCHEMA,
        "name": task["name"] + variant_suffix(cfg, kind),
        "task": task["name"], "kind": kind, "dataset": task["dataset"],
        "metrics": metrics, "protocol": protocol,
        "checkpoint": {"path": str(weights), "sha256": sha, "model": model_name_of(evaluator.model.cfg)},
        "data": {"annotation": splits["eval"].annotation, "video_root": splits["eval"].video_root, **data},
        "world_size": world_size,
        "time_s": {"load": round(loaded - start, 3), "video": round(evaluator.timings["video"], 3),
                   "text": round(evaluator.timings["text"], 3), "total": round(time.perf_counter() - start, 3)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if rank == 0:
        path = write_results(results, cfg.output_dir)
        log.info("results: %s", path)
        print(format_table([results]), flush=True)
        if kind == "score":
            print(f"per-video scores: {write_per_video(results, cfg.output_dir)}", flush=True)
    return results
