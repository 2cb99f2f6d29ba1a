"""From one source video to clip rows and clip mp4s: scene splitting or cutting released spans.

This is the per-video unit that the stage runner maps over a process pool. It never raises: any
failure (missing file, corrupt container, decode error) becomes one ``failed`` row with the error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av

from viclip.curation.errors import SourceError
from viclip.curation.extract import ExtractConfig, ExtractedClip, extract_clips
from viclip.curation.filters import FilterConfig
from viclip.curation.scenes import SceneConfig, open_video
from viclip.curation.sources import Source, localize
from viclip.curation.splitter import split_one_pass, split_two_pass
from viclip.data.formats import VideoDecodeError


@dataclass(frozen=True)
class CurationConfig:
    """Everything that decides a stage's output; recorded beside it so a rerun cannot mix settings."""

    scenes: SceneConfig = field(default_factory=SceneConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    ytdlp_format: str = "bv*[height<=720][ext=mp4]/b[height<=720]"


@dataclass
class VideoResult:
    """Rows for one source (clip order) and the mp4 bytes of its kept clips (same order as kept rows)."""

    rows: list[dict[str, Any]]
    clips: list[bytes]
    seconds: float = 0.0      # wall and CPU time spent on this video by its worker
    cpu_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(r["status"] == "failed" for r in self.rows)


def probe(path: str | os.PathLike) -> dict[str, Any]:
    """Source duration, frame rate and size from the container header (no decoding)."""
    with av.open(str(path)) as container:
        s = open_video(container, str(path), threads=1)
        if s.duration is not None:
            duration = float(s.duration * s.time_base)
        else:
            duration = container.duration / 1e6 if container.duration else None
        rate = s.average_rate or s.guessed_rate
        return {"source_duration": duration, "source_fps": float(rate) if rate else None,
                "source_width": s.codec_context.width, "source_height": s.codec_context.height}


def _clip_fields(clip: ExtractedClip) -> dict[str, Any]:
    duration = clip.end - clip.start
    return {"start": clip.start, "end": clip.end, "duration": duration, "frames": clip.frames,
            "fps": clip.frames / duration if duration > 0 else None, "width": clip.width,
            "height": clip.height, "bytes": len(clip.mp4)}


def split_video(source: Source, path: str, cfg: CurationConfig) -> VideoResult:
    """Scene cuts, length and motion filters, and the kept clips: one decode pass when re-encoding
    video only (the default), two for stream copy or clips with audio."""
    split = split_two_pass if cfg.extract.copy or cfg.extract.audio else split_one_pass
    result = split(path, cfg.scenes, cfg.filters, cfg.extract)
    scan = result.scan
    info = {"source_duration": scan.duration, "source_fps": scan.fps,
            "source_width": scan.width, "source_height": scan.height}
    rows, clips = [], []
    for i, (c, clip) in enumerate(zip(result.candidates, result.clips)):
        row = {"video_id": source.video_id, "source": source.uri, "clip_id": f"{source.video_id}_{i:05d}",
               "clip_index": i, "start": c.start, "end": c.end, "duration": c.duration, "frames": c.frames,
               "fps": c.frames / c.duration if c.duration > 0 else None,
               "motion_mean": c.motion_mean, "motion_std": c.motion_std, **info}
        if clip is not None:
            row.update(_clip_fields(clip), status="kept", reason="")
            clips.append(clip.mp4)
        else:
            row.update(status="dropped", reason=c.reason or "empty")
        rows.append(row)
    return VideoResult(rows, clips)


def cut_annotated(source: Source, path: str, cfg: CurationConfig) -> VideoResult:
    """Cut the released spans of an annotated source as they are (no scene detection or filtering)."""
    info = probe(path)
    anns = source.annotations or []
    extracted = extract_clips(path, [(a.start, a.end) for a in anns], cfg.extract)
    rows, clips = [], []
    for i, (a, clip) in enumerate(zip(anns, extracted)):
        row = {"video_id": source.video_id, "source": source.uri, "clip_id": f"{source.video_id}_{i:05d}",
               "clip_index": i, "start": a.start, "end": a.end, "duration": a.end - a.start,
               "caption": a.caption, "aesthetic": a.aesthetic, "clip_text_sim": a.clip_text_sim,
               "extra": json.dumps(a.extra, ensure_ascii=False) if a.extra else None, **info}
        if clip is not None:
            row.update(_clip_fields(clip), status="kept", reason="")
            clips.append(clip.mp4)
        else:
            row.update(status="dropped", reason="empty")  # the span holds no frame of the source
        rows.append(row)
    return VideoResult(rows, clips)


def failed_result(source: Source, error: BaseException) -> VideoResult:
    """The one ``failed`` row of a source, whose ``reason`` (see ``FAILURE_REASONS``) says why."""
    if isinstance(error, SourceError):
        reason = error.reason
    elif isinstance(error, FileNotFoundError):  # before FFmpegError: PyAV's own subclasses both
        reason = "missing"
    elif isinstance(error, (av.error.FFmpegError, VideoDecodeError)):
        reason = "undecodable"
    else:
        reason = "error"
    message = f"{type(error).__name__}: {error}".strip()
    return VideoResult([{"video_id": source.video_id, "source": source.uri, "clip_index": -1,
                         "status": "failed", "reason": reason, "error": message[:2000]}], [])


def process_source(source: Source, cfg: CurationConfig,
                   report_duration: Callable[[float | None], None] | None = None) -> VideoResult:
    """Scene-split a plain source or cut an annotated one; a failure becomes a ``failed`` row.

    ``report_duration`` (the supervised pool's) is given the header's duration before the heavy
    work, so that the video's time budget can grow with it.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with localize(source.uri, cfg.ytdlp_format) as path:
            if report_duration is not None:
                report_duration(probe(path)["source_duration"])
            if source.annotations is None:
                result = split_video(source, path, cfg)
            else:
                result = cut_annotated(source, path, cfg)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop a million-video run
        result = failed_result(source, e)
    result.seconds, result.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return result
