"""Source collection: from search queries to a list of candidate YouTube videos for ``split-scenes --list``.

InternVid searched YouTube with ~6K action phrases in several languages (the release's
``Data/InternVid/queries.jsonl``: ``search_word_id`` the English phrase, ``search_word`` its Chinese
translation; read here as languages ``en`` and ``zh``). Each query is one search (yt-dlp's ``ytsearchN:``
behind :class:`Search`, which tests replace); its results, with their rank, are the candidates.

The queries are cut into shards like the other stages' sources: shard ``s`` writes its candidates
(``{s:05d}.parquet``: query, language, rank, video id, title, duration) and then ``{s:05d}.stats.json``,
its done mark; a rerun skips done shards, SLURM task ``i`` of ``N`` takes the shards ``s % N == i``, and an
engine (:mod:`viclip.curation.engine`) runs them. Once every shard is done, whichever task finishes last
writes the list, deterministically whatever ran which shard: queries in file order, each one's results by
rank, a video taken by the first query that found it (dedup across queries), never a video id listed in an
``exclude`` file (datasets the corpus must not overlap: Kinetics CSVs, WebVid / HowTo100M / HD-VILA /
InternVid id lists, any text of ids; every field is tried as a YouTube id or URL), and at most ``per_query``
videos per query (balance: a popular phrase does not fill the corpus). Outputs: ``sources.txt``
(``ID<TAB>URL`` a line, what ``split-scenes --list`` reads), ``sources.parquet`` (the same videos with their
query, language and rank) and ``sources.json`` (counts).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from viclip.atomic import atomic_path, atomic_write
from viclip.curation.engine import Advance, Engine, LocalEngine, ShardJob, ShardRunner
from viclip.curation.sources import is_youtube, json_lines
from viclip.curation.stage_configs import CollectConfig
from viclip.curation.stage_dir import StageDir, atomic_json, record_or_check_settings, shard_name, stats_name
from viclip.curation.stages import task_shards
from viclip.data.annotations import youtube_id
from viclip.errors import ConfigError, DataError

LIST_FILE, TABLE_FILE, REPORT_FILE = "sources.txt", "sources.parquet", "sources.json"
# the release's queries.jsonl: field -> the language of its phrases
OFFICIAL_FIELDS = {"search_word_id": "en", "search_word": "zh"}
CANDIDATE_SCHEMA = pa.schema([
    ("query_index", pa.int64()), ("query_id", pa.string()), ("query", pa.string()), ("language", pa.string()),
    ("rank", pa.int32()), ("video_id", pa.string()), ("title", pa.string()), ("duration", pa.float64()),
])


@dataclass(frozen=True)
class Query:
    id: str        # the English phrase of the release (its search_word_id), shared by its translations
    text: str      # what is searched
    language: str


class Search(Protocol):
    """One search: up to ``limit`` results, best first, each a dict with ``id`` (and ``title``, ``duration``)."""

    def __call__(self, query: str, limit: int) -> list[dict[str, Any]]: ...


class YtDlpSearch:
    """YouTube search through yt-dlp (the ``fetch`` extra): result metadata only, nothing downloaded."""

    def __call__(self, query: str, limit: int) -> list[dict[str, Any]]:
        try:
            import yt_dlp
        except ImportError:
            raise ImportError("collect-sources searches YouTube with yt-dlp: pip install 'viclip[fetch]'") from None
        opts = {"quiet": True, "no_warnings": True, "extract_flat": "in_playlist", "skip_download": True}
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(f"ytsearch{limit}:{query}", download=False)
        return [e for e in info.get("entries") or [] if e and e.get("id")]


def read_queries(path: str | os.PathLike, languages: Sequence[str] = ("en", "zh")) -> list[Query]:
    """Queries from the release's queries.jsonl (one query per wanted language of each line), a JSONL of
    ``{"query", "language"[, "id"]}``, or a text file (one English query a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query list not found: {path}")
    unknown = sorted(set(languages) - set(OFFICIAL_FIELDS.values()))
    if path.suffix != ".jsonl":
        return [Query(line.strip(), line.strip(), "en") for line in path.read_text().splitlines() if line.strip()]
    queries = []
    for n, record in json_lines(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: expected an object, got {type(record).__name__}")
        if "query" in record:
            text = record["query"]
            queries.append(Query(str(record.get("id", text)), str(text), str(record.get("language", "en"))))
            continue
        if "search_word_id" not in record:
            raise DataError(f"{path}:{n}: expected 'search_word_id' and 'search_word' (the release's "
                            f"queries.jsonl) or 'query', got {sorted(record)}")
        if unknown:
            raise ConfigError(f"--languages {' '.join(unknown)}: {path} holds {', '.join(OFFICIAL_FIELDS.values())}")
        for name, language in OFFICIAL_FIELDS.items():
            if language in languages and str(record.get(name) or "").strip():
                queries.append(Query(record["search_word_id"], record[name].strip(), language))
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries


def _youtube_ids(value: Any) -> Iterator[str]:
    """The YouTube ids in a field: a name carrying one (``youtube_id``) or a YouTube URL; lists and objects walked."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _youtube_ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from _youtube_ids(v)
    elif isinstance(value, str):
        if is_youtube(value):
            url = urlparse(value)
            value = parse_qs(url.query).get("v", [url.path.rsplit("/", 1)[-1]])[0]
        found = youtube_id(value.strip())
        if found:
            yield found


def read_excluded_ids(paths: Sequence[str | os.PathLike]) -> tuple[set[str], dict[str, int]]:
    """Every YouTube id in ``paths`` (CSV cells, JSON / JSONL values, text fields split on whitespace), and
    per file how many new ids it added."""
    ids: set[str] = set()
    counts: dict[str, int] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"exclude list not found: {path}")
        before = len(ids)
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            if path.suffix == ".csv":
                rows: Iterator[Any] = csv.reader(f)
            elif path.suffix == ".json":
                rows = iter([json.load(f)])
            elif path.suffix == ".jsonl":
                rows = (record for _, record in json_lines(path))
            else:
                rows = (line.split() for line in f)
            for row in rows:
                ids.update(_youtube_ids(row))
        counts[str(path)] = len(ids) - before
    return ids, counts


class QueryShards:
    """Builds the runner of one shard of queries (picklable: an engine may ship it to other processes)."""

    def __init__(self, out_dir: str, cfg: CollectConfig, search: Search) -> None:
        self.out_dir, self.cfg, self.search = out_dir, cfg, search

    def __call__(self) -> ShardRunner:
        out = StageDir(self.out_dir)

        def run(shard: int, queries: list[tuple[int, Query]], advance: Advance) -> dict:
            rows = []
            for index, q in queries:
                hits = self.search(q.text, self.cfg.results_per_query)[:self.cfg.results_per_query]
                for rank, hit in enumerate(hits):
                    duration = hit.get("duration")
                    rows.append({"query_index": index, "query_id": q.id, "query": q.text, "language": q.language,
                                 "rank": rank, "video_id": str(hit["id"]), "title": hit.get("title"),
                                 "duration": float(duration) if duration is not None else None})
                advance(1)
            with atomic_path(out.path(f"{shard_name(shard)}.parquet")) as tmp:
                pq.write_table(pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), tmp)
            stats = {"queries": len(queries), "results": len(rows)}
            atomic_json(out.path(stats_name(shard)), stats)  # the done mark, last
            return stats

        return run


def write_source_list(out: StageDir, num_shards: int, cfg: CollectConfig, excluded: set[str]) -> dict:
    """Merge the shards' candidates into the source list (the rules of the module docstring)."""
    table = pa.concat_tables([out.read_table(f"{shard_name(s)}.parquet") for s in range(num_shards)])
    table = table.sort_by([("query_index", "ascending"), ("rank", "ascending")])
    taken: set[str] = set()
    per_query: dict[int, int] = {}
    keep, counts = [], {"results": table.num_rows, "excluded": 0, "duplicates": 0, "over_cap": 0}
    for i, (q, vid) in enumerate(zip(table.column("query_index").to_pylist(), table.column("video_id").to_pylist())):
        reason = ("excluded" if vid in excluded else "duplicates" if vid in taken else
                  "over_cap" if per_query.get(q, 0) >= cfg.per_query else None)
        if reason:
            counts[reason] += 1
            continue
        taken.add(vid)
        per_query[q] = per_query.get(q, 0) + 1
        keep.append(i)
    chosen = table.take(pa.array(keep, pa.int64()))
    chosen = chosen.append_column("url", pa.array([f"https://www.youtube.com/watch?v={v}"
                                                   for v in chosen.column("video_id").to_pylist()], pa.string()))
    with atomic_path(out.path(TABLE_FILE)) as tmp:
        pq.write_table(chosen, tmp)
    atomic_write(out.path(LIST_FILE), "".join(f"{v}\t{u}\n" for v, u in zip(chosen.column("video_id").to_pylist(),
                                                                             chosen.column("url").to_pylist())))
    languages: dict[str, int] = {}
    for language in chosen.column("language").to_pylist():
        languages[language] = languages.get(language, 0) + 1
    return {**counts, "videos": chosen.num_rows, "queries_with_videos": len(per_query), "per_language": languages}


def collect_sources(queries_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: CollectConfig | None = None,
                    exclude: Sequence[str | os.PathLike] = (), search: Search | None = None, task: int = 0,
                    num_tasks: int = 1, engine: Engine | None = None) -> dict:
    """Search this task's pending shards of queries; write the source list once every shard is done.
    Returns the run's counts (and the list's, when it was written)."""
    cfg = cfg or CollectConfig()
    started = time.perf_counter()
    queries = read_queries(queries_path, cfg.languages)
    shards = [list(enumerate(queries))[i:i + cfg.queries_per_shard]
              for i in range(0, len(queries), cfg.queries_per_shard)]
    out = StageDir(out_dir)
    out.fs.makedirs(out.url, exist_ok=True)
    digest = hashlib.sha256(json.dumps([asdict(q) for q in queries]).encode()).hexdigest()
    excluded, per_file = read_excluded_ids(exclude)
    exclude_digest = hashlib.sha256("\n".join(sorted(excluded)).encode()).hexdigest()
    record_or_check_settings(out, {"stage": "collect-sources", **asdict(cfg), "languages": list(cfg.languages),
                                   "queries": len(queries), "queries_sha256": digest,
                                   "excluded_ids_sha256": exclude_digest})
    mine = [s for s in task_shards(len(shards), task, num_tasks) if not out.exists(stats_name(s))]
    job = ShardJob(QueryShards(out.url, cfg, search or YtDlpSearch()), {s: shards[s] for s in mine}, unit="query",
                   sizes={s: len(shards[s]) for s in mine})
    report: dict[str, Any] = {"queries": len(queries), "shards": len(shards), "searched": 0,
                              "done_before": len(task_shards(len(shards), task, num_tasks)) - len(mine)}
    for _, stats in (engine or LocalEngine()).run(job, lambda shard, n: None):
        report["searched"] += stats["queries"]
    if all(out.exists(stats_name(s)) for s in range(len(shards))):
        report["list"] = write_source_list(out, len(shards), cfg, excluded)
        report["list"]["excluded_ids_per_file"] = per_file
        atomic_json(out.path(REPORT_FILE), report["list"])
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
