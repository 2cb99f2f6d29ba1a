"""Where source videos come from: a folder, a file list, or an InternVid annotation JSONL plus an id map.

A :class:`Source` is one video to process; annotated sources carry the released clips to cut
(``YoutubeID``, ``Start_timestamp``/``End_timestamp`` as ``HH:MM:SS.mmm``, ``Caption`` and the
optional ``Aesthetic_Score``/``UMT_Score``). :func:`localize` turns a URI into a local file once per
source: local paths pass through, any other fsspec URL is copied to a temporary file, and YouTube
URLs go through yt-dlp (the optional ``fetch`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from viclip.curation.errors import SourceError
from viclip.data.formats import VIDEO_EXTENSIONS
from viclip.errors import ConfigError, DataError

# released score names -> clip table columns (the paper's aesthetic score and UMT clip-caption similarity)
SCORE_FIELDS = {"Aesthetic_Score": "aesthetic", "UMT_Score": "clip_text_sim"}
ANNOTATION_FIELDS = ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption")
_YOUTUBE_HOSTS = ("youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be")
_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


@dataclass
class Annotation:
    """One released clip: its span in the source and its caption and scores."""

    start: float
    end: float
    caption: str
    aesthetic: float | None = None
    clip_text_sim: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """A source video; ``annotations`` is None for scene splitting, the clips to cut otherwise."""

    video_id: str
    uri: str
    annotations: list[Annotation] | None = None


def list_folder(root: str | os.PathLike) -> list[Source]:
    """Every video file under ``root`` (recursive, sorted); the id is the relative path without suffix."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    return [Source(str(p.relative_to(root).with_suffix("")), str(p)) for p in paths]


def read_file_list(path: str | os.PathLike) -> list[Source]:
    """Sources from a text file: one ``URI`` or ``ID<TAB>URI`` per line; blank lines and ``#`` comments skipped."""
    sources = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise DataError(f"{path}:{n}: expected 'URI' or 'ID<TAB>URI', got {len(parts)} fields")
        uri = parts[-1]
        video_id = parts[0] if len(parts) == 2 else Path(urlparse(uri).path).stem
        sources.append(Source(video_id, uri))
    return sources


def parse_timestamp(value: str) -> float:
    """``HH:MM:SS.mmm`` (the InternVid release format) to seconds."""
    m = _TIMESTAMP.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"timestamp {value!r} is not HH:MM:SS.mmm")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of a JSON-lines file, blank lines skipped; a bad line is an error naming it."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e})") from None


def read_annotations(path: str | os.PathLike) -> dict[str, list[Annotation]]:
    """Released clips grouped by ``YoutubeID`` (in order of first appearance), so each source is fetched once."""
    grouped: dict[str, list[Annotation]] = {}
    for n, rec in json_lines(path):
        missing = [k for k in ANNOTATION_FIELDS if k not in rec]
        if missing:
            raise DataError(f"{path}:{n}: missing field(s) {missing}")
        try:
            start, end = parse_timestamp(rec["Start_timestamp"]), parse_timestamp(rec["End_timestamp"])
        except ValueError as e:
            raise DataError(f"{path}:{n}: {e}") from None
        if end <= start:
            raise DataError(f"{path}:{n}: End_timestamp {rec['End_timestamp']} is not after "
                             f"Start_timestamp {rec['Start_timestamp']}")
        if not isinstance(rec["Caption"], str):
            raise DataError(f"{path}:{n}: Caption must be a string, got {type(rec['Caption']).__name__} "
                            f"{rec['Caption']!r}")
        scores = {col: float(rec[k]) for k, col in SCORE_FIELDS.items() if rec.get(k) is not None}
        extra = {k: v for k, v in rec.items() if k not in ANNOTATION_FIELDS and k not in SCORE_FIELDS}
        grouped.setdefault(str(rec["YoutubeID"]), []).append(
            Annotation(start, end, rec["Caption"], extra=extra, **scores))
    return grouped


def read_id_map(path: str | os.PathLike) -> dict[str, str]:
    """Id -> URI from a JSON object, or a two-column TSV/CSV (``id``, ``uri``; a header row is allowed)."""
    path = Path(path)
    if path.suffix == ".json":
        mapping = json.loads(path.read_text())
        if not isinstance(mapping, dict):
            raise DataError(f"{path}: expected a JSON object mapping ids to paths or URLs")
        return {str(k): str(v) for k, v in mapping.items()}
    delimiter = "," if path.suffix == ".csv" else "\t"
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
    if rows and [c.lower() for c in rows[0]] == ["id", "uri"]:
        rows = rows[1:]
    bad = [i for i, r in enumerate(rows, 1) if len(r) != 2]
    if bad:
        raise DataError(f"{path}: rows {bad[:5]} do not have exactly two columns (id, uri)")
    return dict(rows)


def annotated_sources(annotations: dict[str, list[Annotation]], id_map: dict[str, str] | None = None,
                      template: str | None = None) -> list[Source]:
    """Attach a URI to each annotated video: ``id_map[id]`` if given, else ``template.format(id=id)``."""
    if id_map is None and template is None:
        raise ConfigError("annotated sources need an id map or a URI template such as '/videos/{id}.mp4'")
    sources = []
    for video_id, anns in annotations.items():
        if id_map is not None and video_id in id_map:
            uri = id_map[video_id]
        elif template is not None:
            uri = template.format(id=video_id)
        else:
            uri = ""  # becomes a failed row ("no source for id"), not a crash
        sources.append(Source(video_id, uri, anns))
    return sources


def is_youtube(uri: str) -> bool:
    return urlparse(uri).netloc.lower() in _YOUTUBE_HOSTS


def _download_youtube(url: str, directory: str, fmt: str) -> str:
    try:
        import yt_dlp
    except ImportError:
        raise ImportError(f"{url} needs yt-dlp: pip install 'viclip[fetch]'") from None
    opts = {"format": fmt, "outtmpl": os.path.join(directory, "source.%(ext)s"), "quiet": True,
            "noprogress": True, "noplaylist": True}
    with yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(url, download=True)
        return ydl.prepare_filename(info)


def _fetch(uri: str, directory: str, ytdlp_format: str) -> str:
    """Copy a remote source into ``directory``: yt-dlp for YouTube, fsspec for any other URL."""
    if is_youtube(uri):
        return _download_youtube(uri, directory, ytdlp_format)
    import fsspec

    local = os.path.join(directory, "source" + (Path(urlparse(uri).path).suffix or ".mp4"))
    with fsspec.open(uri, "rb") as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    return local


@contextlib.contextmanager
def localize(uri: str, ytdlp_format: str = "bv*[height<=720][ext=mp4]/b[height<=720]") -> Iterator[str]:
    """A local path for ``uri``, fetched once into a temporary directory removed afterwards when remote.

    The default yt-dlp format caps height at 720 as the paper does and needs no ffmpeg for merging.
    A source that does not exist raises FileNotFoundError; any other failure of the fetch (network,
    an unavailable video) raises :class:`SourceError` ``download_failed``; a missing extra stays an
    ImportError (a setup problem, not the source's).
    """
    if not uri:
        raise FileNotFoundError("no source URI for this video id")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not os.path.exists(path):
            raise FileNotFoundError(f"source not found: {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="viclip-src-") as tmp:
        try:
            local = _fetch(uri, tmp, ytdlp_format)
        except (FileNotFoundError, ImportError):
            raise
        except Exception as e:  # yt-dlp and the fsspec backends raise many unrelated types
            raise SourceError("download_failed", f"{uri}: {type(e).__name__}: {e}") from e
        yield local  # outside the try: a failure while processing the file is not the fetch's
