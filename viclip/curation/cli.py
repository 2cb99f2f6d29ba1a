"""Command-line options of the tools, generated from the package's config dataclasses and signatures.

Each field of a config dataclass (or keyword parameter of a function such as ``make_shards``)
becomes an option (``--threshold``, ``--min-scene-len``, ``--short-side``, ``--copy`` ...) with the
package's default, so the tools cannot drift from it: a bool is ``--x/--no-x``, ``T | None`` is an
optional ``T``, a tuple takes several values, a field without a default is required, and a nested
config dataclass gets options prefixed by its field name (``--coarse-path``). Every tool reads
its stage directory or tables from ``--input`` and writes to ``--out``; ``--videos``, ``--list`` and
``--annotations`` name source lists. The tools themselves are viclip.commands' modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from viclip.curation.engine import ENGINES, Engine, make_engine
from viclip.errors import ConfigError

if typing.TYPE_CHECKING:
    from viclip.curation.clips import CurationConfig
# The scene/extraction configs live beside PyAV, OpenCV and PySceneDetect: imported by the functions that
# need them (split-scenes, fetch-clips), so the other stages' parsers (and --help) do not load them.

REQUIRED = object()  # a parameter without a default


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _params(source: type | Callable) -> list[tuple[str, Any, Any]]:
    """``(name, type, default)`` of a dataclass's fields or a function's parameters."""
    hints = typing.get_type_hints(source)
    if dataclasses.is_dataclass(source):
        return [(f.name, hints[f.name], f.default if f.default is not dataclasses.MISSING
                 else f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
                for f in dataclasses.fields(source)]
    return [(p.name, hints.get(p.name, str), REQUIRED if p.default is p.empty else p.default)
            for p in inspect.signature(source).parameters.values()]


def _scalar(hint: Any) -> Any:
    """``T`` of ``T | None``; ``str`` for other unions (paths given as ``str | PathLike``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_options(parser: argparse.ArgumentParser, source: type | Callable, title: str, seen: set[str] | None = None,
                skip: Sequence[str] = (), choices: dict[str, Sequence] | None = None, prefix: str = "",
                base: Any = REQUIRED) -> None:
    """One option per field/parameter of ``source``; a name already in ``seen`` (threads) is not added again.

    ``base`` is the instance whose values are the defaults (a nested field's default; None: every
    option optional and unset).
    """
    seen = set() if seen is None else seen
    choices = choices or {}
    doc = (source.__doc__ or "").strip()
    generated = doc.startswith(f"{source.__name__}(")  # a dataclass without a docstring
    group = parser.add_argument_group(title, None if generated or not doc else doc.splitlines()[0])
    for name, hint, default in _params(source):
        key = prefix + name
        if name in skip or key in seen:
            continue
        seen.add(key)
        if base is not REQUIRED:
            default = getattr(base, name) if base is not None else None
        if default is REQUIRED and type(None) in typing.get_args(hint):
            default = None  # an optional parameter without a default (make_shards' clips_dir)
        kind = _scalar(hint)
        if dataclasses.is_dataclass(kind):
            add_options(parser, kind, f"{title}: {name}", seen, choices=choices, prefix=f"{key}_", base=default)
        elif kind is bool:
            group.add_argument(_flag(key), action=argparse.BooleanOptionalAction, default=default)
        else:
            nargs = "+" if typing.get_origin(kind) is tuple else None
            element = typing.get_args(kind)[0] if nargs else kind
            opts = ({"required": True} if default is REQUIRED else
                    {"default": default, "help": None if default is None else f"default {default}"})
            group.add_argument(_flag(key), type=element, nargs=nargs, choices=choices.get(name), **opts)


def values_from_args(source: type | Callable, args: argparse.Namespace, prefix: str = "",
                     fallbacks: dict[str, str] | None = None) -> dict[str, Any]:
    """The parsed values of ``source``'s options; an unset optional nested config (all its options
    unset) is None, a partly set one fills the rest from the sibling field ``fallbacks`` names."""
    values: dict[str, Any] = {}
    for name, hint, default in _params(source):
        kind = _scalar(hint)
        if dataclasses.is_dataclass(kind):
            nested = values_from_args(kind, args, f"{prefix}{name}_")
            if default is not None:
                values[name] = dataclasses.replace(default, **nested)
            elif any(v is not None for v in nested.values()):
                given = {k: v for k, v in nested.items() if v is not None}
                fallback = (fallbacks or {}).get(name)
                values[name] = dataclasses.replace(values[fallback], **given) if fallback else kind(**given)
            else:
                values[name] = None
        elif hasattr(args, prefix + name):
            value = getattr(args, prefix + name)
            values[name] = tuple(value) if typing.get_origin(kind) is tuple and value is not None else value
    return values


def from_args(cls: type, args: argparse.Namespace, fallbacks: dict[str, str] | None = None) -> Any:
    return cls(**values_from_args(cls, args, fallbacks=fallbacks))


def add_task_args(parser: argparse.ArgumentParser) -> None:
    """SLURM array position and progress display, shared by every resumable stage."""
    parser.add_argument("--task", type=int, default=0, help="array task index (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-tasks", type=int, default=1, help="array size (e.g. $SLURM_ARRAY_TASK_COUNT)")
    add_progress_arg(parser)


def add_engine_args(parser: argparse.ArgumentParser, models: bool = False) -> None:
    """``--engine`` and its options: what runs the stage's shards (:mod:`viclip.curation.engine`)."""
    group = parser.add_argument_group("engine", "what runs the shards; outputs are the same files either way, "
                                                "so a rerun may switch engines")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process, shard after shard; ray: a Ray cluster (needs the 'cluster' extra)")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray started for this run)")
    if models:
        group.add_argument("--gpus-per-worker", type=float, default=1.0,
                           help="GPUs of each Ray actor; each actor loads the models once (0: on CPUs)")
        group.add_argument("--actors", type=int, default=None,
                           help="Ray actors (default: the cluster's GPUs / --gpus-per-worker, 1 without GPUs)")


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The engine the options of :func:`add_engine_args` name."""
    if args.engine == "local":
        if args.ray_address is not None:
            raise ConfigError(f"--ray-address {args.ray_address} needs --engine ray")
        return make_engine("local")
    models = {"gpus_per_worker": args.gpus_per_worker, "actors": args.actors} if hasattr(args, "actors") else {}
    return make_engine("ray", address=args.ray_address, **models)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: every long job shows a bar on a terminal, else a line every 30 s."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (a bar on a terminal, else a line every 30 s); shard lines remain")


def add_curation_args(parser: argparse.ArgumentParser, scenes: bool = True) -> None:
    """Detection/filter options (scene splitting only) and clip encoding options."""
    from viclip.curation.clips import CurationConfig
    from viclip.curation.extract import ExtractConfig
    from viclip.curation.filters import LONG_CLIP_POLICIES, FilterConfig
    from viclip.curation.scenes import DETECTORS, SceneConfig

    seen: set[str] = set()
    if scenes:
        add_options(parser, SceneConfig, "scene detection", seen, choices={"detector": DETECTORS})
        add_options(parser, FilterConfig, "clip filters", seen, choices={"long_clips": LONG_CLIP_POLICIES})
    add_options(parser, ExtractConfig, "clip extraction", seen)
    parser.add_argument("--ytdlp-format", default=CurationConfig.ytdlp_format,
                        help="yt-dlp format for YouTube sources (needs the 'fetch' extra)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Output directory, sharding of the sources, SLURM array position, workers and their time budget."""
    from viclip.curation.pool import TimeBudget

    parser.add_argument("--out", required=True, help="stage output directory (tars, parquet tables, stats): a local "
                                                      "path or any fsspec URL, e.g. s3://bucket/clips")
    parser.add_argument("--videos-per-shard", type=int, default=100)
    add_task_args(parser)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of each shard, one video each (a Ray task asks for as many CPUs); "
                             "0 runs in-process for debugging "
                             "(no time budget, and a crash or hang stops the run)")
    parser.add_argument("--budget-base", type=float, default=TimeBudget.base,
                        help="a video's time budget: this many seconds (its fetch and open included) ... "
                             "(default %(default)s)")
    parser.add_argument("--budget-factor", type=float, default=TimeBudget.factor,
                        help="... plus this many per second of source duration; a video over budget has its "
                             "worker killed and fails with reason 'timeout' (default %(default)s)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo the failed videos of this task's finished shards and rewrite them")
    add_engine_args(parser)


def config_from_args(args: argparse.Namespace) -> CurationConfig:
    from viclip.curation.clips import CurationConfig
    from viclip.curation.extract import ExtractConfig
    from viclip.curation.filters import FilterConfig
    from viclip.curation.scenes import SceneConfig

    return CurationConfig(scenes=from_args(SceneConfig, args), filters=from_args(FilterConfig, args),
                          extract=from_args(ExtractConfig, args), ytdlp_format=args.ytdlp_format)


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from viclip.curation.pool import TimeBudget

    return {"out_dir": args.out, "videos_per_shard": args.videos_per_shard, "task": args.task,
            "num_tasks": args.num_tasks, "workers": args.workers,
            "budget": TimeBudget(args.budget_base, args.budget_factor), "retry_failed": args.retry_failed,
            "progress": not args.no_progress, "engine": engine_from_args(args)}

