"""Command-line options shared by the curation tools, generated from the config dataclasses.

Each field of :class:`SceneConfig`, :class:`FilterConfig` and :class:`ExtractConfig` becomes an
option (``--threshold``, ``--min-scene-len``, ``--short-side``, ``--copy`` ...) with the dataclass
default, so the tools cannot drift from the package's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from viclip.curation.clips import CurationConfig
from viclip.curation.extract import ExtractConfig
from viclip.curation.filters import LONG_CLIP_POLICIES, FilterConfig
from viclip.curation.pool import TimeBudget
from viclip.curation.scenes import SceneConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str, seen: set[str]) -> None:
    """One option per field; a field name shared with an earlier class (threads) sets both."""
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    for f in dataclasses.fields(cls):
        if f.name in seen:
            continue
        seen.add(f.name)
        default = f.default
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "long_clips":
            group.add_argument(_flag(f.name), choices=LONG_CLIP_POLICIES, default=default)
        else:
            group.add_argument(_flag(f.name), type=type(default), default=default, help=f"default {default}")


def add_curation_args(parser: argparse.ArgumentParser, scenes: bool = True) -> None:
    """Detection/filter options (scene splitting only) and clip encoding options."""
    seen: set[str] = set()
    if scenes:
        add_dataclass_args(parser, SceneConfig, "scene detection", seen)
        add_dataclass_args(parser, FilterConfig, "clip filters", seen)
    add_dataclass_args(parser, ExtractConfig, "clip extraction", seen)
    parser.add_argument("--ytdlp-format", default=CurationConfig.ytdlp_format,
                        help="yt-dlp format for YouTube sources (needs the 'fetch' extra)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Output directory, sharding of the sources, SLURM array position, workers and their time budget."""
    parser.add_argument("--out", required=True, help="stage output directory (tars, parquet tables, stats)")
    parser.add_argument("--videos-per-shard", type=int, default=100)
    parser.add_argument("--task", type=int, default=0, help="array task index (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-tasks", type=int, default=1, help="array size (e.g. $SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes, one video each; 0 runs in-process for debugging "
                             "(no time budget, and a crash or hang stops the run)")
    parser.add_argument("--budget-base", type=float, default=TimeBudget.base,
                        help="a video's time budget: this many seconds (its fetch and open included) ... "
                             "(default %(default)s)")
    parser.add_argument("--budget-factor", type=float, default=TimeBudget.factor,
                        help="... plus this many per second of source duration; a video over budget has its "
                             "worker killed and fails with reason 'timeout' (default %(default)s)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo the failed videos of this task's finished shards and rewrite them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines per shard only)")


def _pick(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    return CurationConfig(scenes=_pick(SceneConfig, args), filters=_pick(FilterConfig, args),
                          extract=_pick(ExtractConfig, args), ytdlp_format=args.ytdlp_format)


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"out_dir": args.out, "videos_per_shard": args.videos_per_shard, "task": args.task,
            "num_tasks": args.num_tasks, "workers": args.workers,
            "budget": TimeBudget(args.budget_base, args.budget_factor), "retry_failed": args.retry_failed,
            "progress": not args.no_progress}
