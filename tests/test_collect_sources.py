"""collect-sources with a fake search: exclusion of dataset ids, dedup across queries, the per-query cap, the
release's queries.jsonl, resume after a kill, and the list split-scenes reads."""

from __future__ import annotations

import json
import sys
import zlib

import pyarrow.parquet as pq
import pytest

from viclip.commands.collect_sources import main as collect_main
from viclip.curation.collect import collect_sources, read_excluded_ids, read_queries
from viclip.curation.sources import read_file_list
from viclip.curation.stage_configs import CollectConfig
from viclip.errors import DataError, OutputError


def vid(query: str, rank: int) -> str:
    """An 11-character YouTube-like id per (query, rank)."""
    return f"{zlib.crc32(query.encode()) % 10**6:06d}{rank:05d}"


class FakeSearch:
    """Results of a query: its own videos by rank, plus one shared video every query finds at rank 1.
    ``fail_after`` raises on that many-th call (a network error, or a kill mid-shard)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, query: str, limit: int) -> list[dict]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("search failed")
        self.calls.append(query)
        hits = [{"id": vid(query, r), "title": f"{query} {r}", "duration": 60.0 + r} for r in range(limit)]
        hits.insert(1, {"id": "SHAREDvid01", "title": "everyone's", "duration": None})
        return hits[:limit]


@pytest.fixture
def queries(tmp_path):
    """The release's format: an English phrase and its Chinese translation per line."""
    path = tmp_path / "queries.jsonl"
    rows = [{"search_word_id": f"action {i}", "search_word": f"动作 {i}"} for i in range(7)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_official_queries_are_read_per_language(queries):
    both = read_queries(queries)
    assert len(both) == 14 and {q.language for q in both} == {"en", "zh"}
    assert [q.text for q in both[:2]] == ["action 0", "动作 0"] and both[1].id == "action 0"
    assert [q.text for q in read_queries(queries, ("en",))] == [f"action {i}" for i in range(7)]


def test_excludes_kinetics_ids_dedups_across_queries_and_caps_per_query(queries, tmp_path):
    search = FakeSearch()
    taken = [vid("action 0", 0), vid("动作 3", 2)]
    kinetics = tmp_path / "k400_train.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\n"
                        f"abseiling,{taken[0]},10,20,train\nair drumming,{taken[1]},0,10,train\n")
    ids_txt = tmp_path / "internvid_ids.txt"
    ids_txt.write_text(f"https://www.youtube.com/watch?v={vid('action 5', 4)}\n")
    cfg = CollectConfig(results_per_query=8, per_query=4, queries_per_shard=3)
    report = collect_sources(queries, tmp_path / "out", cfg, exclude=[kinetics, ids_txt], search=search)
    table = pq.read_table(tmp_path / "out" / "sources.parquet")
    ids = table.column("video_id").to_pylist()
    assert not {*taken, vid("action 5", 4)} & set(ids)  # excluded, and the next results fill the cap instead
    assert len(ids) == len(set(ids))
    assert ids.count("SHAREDvid01") == 1 and table.column("query").to_pylist()[ids.index("SHAREDvid01")] == "action 0"
    per_query = [table.column("query").to_pylist().count(q.text) for q in read_queries(queries)]
    assert per_query == [4] * 14
    assert report["list"]["excluded"] == 3 and report["list"]["duplicates"] == 13
    # the list split-scenes --list reads
    sources = read_file_list(tmp_path / "out" / "sources.txt")
    assert [s.video_id for s in sources] == ids
    assert sources[0].uri == f"https://www.youtube.com/watch?v={ids[0]}"


def test_a_killed_run_resumes_without_redoing_done_shards(queries, tmp_path):
    cfg = CollectConfig(results_per_query=5, per_query=3, queries_per_shard=3)
    with pytest.raises(ConnectionError):
        collect_sources(queries, tmp_path / "out", cfg, search=FakeSearch(fail_after=7))  # dies in shard 2
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.stats.json")) == ["00000.stats.json", "00001.stats.json"]
    assert not (out / "sources.txt").exists()
    rerun = FakeSearch()
    report = collect_sources(queries, out, cfg, search=rerun)
    assert rerun.calls == [q.text for q in read_queries(queries)[6:]]  # shards 2..4 only
    assert report["done_before"] == 2 and report["searched"] == 8
    fresh = tmp_path / "fresh"
    collect_sources(queries, fresh, cfg, search=FakeSearch())
    assert (out / "sources.txt").read_text() == (fresh / "sources.txt").read_text()
    with pytest.raises(OutputError, match="per_query"):
        collect_sources(queries, out, CollectConfig(results_per_query=5, per_query=2, queries_per_shard=3),
                        search=FakeSearch())


def test_slurm_tasks_write_the_list_once_all_shards_are_done(queries, tmp_path):
    cfg = CollectConfig(results_per_query=5, per_query=3, queries_per_shard=3)
    first = collect_sources(queries, tmp_path / "out", cfg, search=FakeSearch(), task=0, num_tasks=2)
    assert "list" not in first and not (tmp_path / "out" / "sources.txt").exists()
    last = collect_sources(queries, tmp_path / "out", cfg, search=FakeSearch(), task=1, num_tasks=2)
    assert last["list"]["videos"] == 14 * 3  # 3 a query: the shared video counts for the first query only
    assert len((tmp_path / "out" / "sources.txt").read_text().splitlines()) == last["list"]["videos"]


def test_exclude_reads_ids_from_every_format(tmp_path):
    files = {"a.csv": "video_id,text\nAAAAAAAAAA1,hi\n", "b.json": json.dumps([{"video": "v_BBBBBBBBBB2.mp4"}]),
             "c.jsonl": json.dumps({"YoutubeID": "CCCCCCCCCC3", "Caption": "x"}) + "\n",
             "d.txt": "https://youtu.be/DDDDDDDDDD4\nEEEEEEEEEE5_10_20\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ids, per_file = read_excluded_ids([tmp_path / n for n in files])
    assert {"AAAAAAAAAA1", "BBBBBBBBBB2", "CCCCCCCCCC3", "DDDDDDDDDD4", "EEEEEEEEEE5"} <= ids
    assert all(per_file.values())


def test_bad_inputs_end_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"word": "x"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1: expected 'search_word_id'"):
        read_queries(bad)
    monkeypatch.setattr(sys, "argv", ["collect_sources.py", "--queries", str(tmp_path / "none.jsonl"),
                                      "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_info:
        collect_main()
    assert "query list not found" in str(exit_info.value.code)


def test_the_command_ends_with_its_summary_line(queries, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("viclip.curation.collect.YtDlpSearch", FakeSearch)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["collect-sources", "--queries", str(queries), "--out", str(out),
                                      "--results-per-query", "8", "--per-query", "4", "--queries-per-shard", "3"])
    collect_main()
    assert capsys.readouterr().out.strip() == (
        f"14 queries searched (0 shards done before, of 5); 56 videos from 14 queries (0 excluded ids, "
        f"13 duplicates, 43 over --per-query) -> {out}/sources.txt; report in {out}/sources.json")
