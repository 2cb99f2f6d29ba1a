"""Interleaved video-text sequences (InternVid-ICL formats a, b, c) follow their definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from viclip.curation.interleave import ASRIndex, ICLConfig, build_icl
from viclip.curation.table import rows_to_table, write_table
from viclip.errors import DataError


def _clip(video: str, i: int, start: float, caption: str | None = "cap", status: str = "kept") -> dict:
    return {"video_id": video, "clip_id": f"{video}_{i}", "status": status, "start": start, "end": start + 2.0,
            "duration": 2.0, "caption": f"{caption} {video} {i}" if caption else caption,
            "clip_tar": "00000.tar", "clip_key": f"00000{i:06d}"}


def _tables(tmp_path):
    a = [_clip("vidA", i, 10.0 * i) for i in range(5)]
    rows1 = [a[3], a[0], a[4], a[1], a[2],  # out of temporal order on purpose
             _clip("vidB", 0, 0.0), _clip("vidB", 1, 4.0), _clip("vidB", 2, 8.0, caption=None),
             _clip("vidB", 3, 12.0, status="dropped"), _clip("vidC", 0, 0.0)]
    rows2 = [_clip("vidD", i, 3.0 * i) for i in range(4)] + [_clip("vidE", i, 3.0 * i) for i in range(3)]
    write_table(rows_to_table(rows1), tmp_path / "00000.parquet")
    write_table(rows_to_table(rows2), tmp_path / "00001.parquet")
    return [tmp_path / "00000.parquet", tmp_path / "00001.parquet"]


def _read(path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


def _groups(sequence: list[dict]) -> list[tuple[str, bool, list[dict]]]:
    """Split a sequence into (clip_id, has_video, text items) per clip, checking the item order."""
    groups = []
    pending_video = None
    for item in sequence:
        if item["type"] == "video":
            assert pending_video is None, "two videos in a row: a clip lost its caption"
            pending_video = item
        elif item["source"] == "caption":
            if pending_video is not None:
                assert pending_video["clip_id"] == item["clip_id"], "a video is followed by another clip's caption"
            groups.append((item["clip_id"], pending_video is not None, [item]))
            pending_video = None
        else:
            assert item["source"] == "asr" and groups[-1][0] == item["clip_id"], "ASR must follow its clip's caption"
            groups[-1][2].append(item)
    assert pending_video is None, "a video at the end without its caption"
    return groups


def test_format_a_orders_clips_in_time_and_drops_videos_not_captions(tmp_path):
    files = _tables(tmp_path)
    report = build_icl(files, tmp_path / "a.jsonl", ICLConfig("a", seed=1), clips_dir="/data/clips")
    seqs = _read(tmp_path / "a.jsonl")
    assert set(seqs) == {"vidA", "vidB", "vidD", "vidE"}  # vidC has one clip; vidB keeps 2 captioned kept clips
    assert (report.too_few_clips, report.no_caption, report.sequences) == (1, 1, 4)
    groups = _groups(seqs["vidA"]["sequence"])
    assert [g[0] for g in groups] == [f"vidA_{i}" for i in range(5)]
    assert [g[2][0]["text"] for g in groups] == [f"cap vidA {i}" for i in range(5)]
    video = next(item for item in seqs["vidA"]["sequence"] if item["type"] == "video")
    i = int(video["clip_id"][-1])
    assert video == {"type": "video", "clip_id": f"vidA_{i}", "tar": "/data/clips/00000.tar",
                     "key": f"00000{i:06d}", "start": 10.0 * i, "end": 10.0 * i + 2.0}
    assert [g[0] for g in _groups(seqs["vidB"]["sequence"])] == ["vidB_0", "vidB_1"]
    assert report.videos_dropped == sum(not g[1] for s in seqs.values() for g in _groups(s["sequence"]))

    # seeded per source video: the same seed repeats, another seed differs, other files do not matter
    build_icl(files, tmp_path / "again.jsonl", ICLConfig("a", seed=1), clips_dir="/data/clips")
    assert _read(tmp_path / "again.jsonl") == seqs
    build_icl(files[1:], tmp_path / "one_file.jsonl", ICLConfig("a", seed=1), clips_dir="/data/clips")
    assert _read(tmp_path / "one_file.jsonl")["vidD"] == seqs["vidD"]
    other = [build_icl(files, tmp_path / f"s{s}.jsonl", ICLConfig("a", seed=s)) for s in range(2, 6)]
    assert any(_read(tmp_path / f"s{s}.jsonl")["vidA"] != {**seqs["vidA"]} for s in range(2, 6))
    assert all(r.sequences == 4 for r in other)


def test_format_a_drops_a_video_with_probability_0_3(tmp_path):
    rows = [_clip(f"v{v:03d}", i, 2.0 * i) for v in range(300) for i in range(10)]
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    report = build_icl([tmp_path / "t.parquet"], tmp_path / "a.jsonl", ICLConfig("a"))
    groups = [g for s in _read(tmp_path / "a.jsonl").values() for g in _groups(s["sequence"])]
    assert len(groups) == report.clips == 3000
    rate = sum(not g[1] for g in groups) / len(groups)
    assert abs(rate - 0.3) < 0.035  # 4 standard deviations at n = 3000


def test_format_b_adds_overlapping_asr_after_each_caption(tmp_path):
    files = _tables(tmp_path)
    segments = [{"video_id": "vidA", "start": 0.5, "end": 1.0, "text": "hello"},
                {"video_id": "vidA", "start": 1.5, "end": 11.0, "text": "there"},  # spans clips 0 and 1
                {"video_id": "vidA", "start": 40.0, "end": 41.0, "text": "last"},
                {"video_id": "vidD", "start": 100.0, "end": 101.0, "text": "after every clip"}]
    with open(tmp_path / "asr.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in segments)
    asr = ASRIndex.load(tmp_path / "asr.jsonl")
    build_icl(files, tmp_path / "b.jsonl", ICLConfig("b", seed=1), asr=asr)
    seqs = _read(tmp_path / "b.jsonl")
    asr_text = {g[0]: [t["text"] for t in g[2][1:]] for g in _groups(seqs["vidA"]["sequence"])}
    assert asr_text == {"vidA_0": ["hello there"], "vidA_1": ["there"], "vidA_2": [], "vidA_3": [],
                        "vidA_4": ["last"]}
    assert all(len(g[2]) == 1 for g in _groups(seqs["vidD"]["sequence"]))
    # removing the ASR items gives format (a) with the same seed
    build_icl(files, tmp_path / "a.jsonl", ICLConfig("a", seed=1))
    plain = _read(tmp_path / "a.jsonl")
    for vid, seq in seqs.items():
        assert [i for i in seq["sequence"] if i.get("source") != "asr"] == plain[vid]["sequence"]
    with pytest.raises(ValueError, match="needs ASR"):
        build_icl(files, tmp_path / "x.jsonl", ICLConfig("b"))


def test_format_c_concatenates_two_different_videos_sequences(tmp_path):
    rows = [_clip(f"v{v}", i, 2.0 * i) for v in range(7) for i in range(3)]
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    build_icl([tmp_path / "t.parquet"], tmp_path / "a.jsonl", ICLConfig("a", seed=3))
    report = build_icl([tmp_path / "t.parquet"], tmp_path / "c.jsonl", ICLConfig("c", seed=3))
    single = _read(tmp_path / "a.jsonl")
    pairs = list(_read(tmp_path / "c.jsonl").values())
    assert len(pairs) == 3 and report.unpaired == 1
    used = [v for p in pairs for v in p["videos"]]
    assert len(used) == len(set(used)) == 6
    for p in pairs:
        first, second = p["videos"]
        assert first != second and p["format"] == "c"
        assert p["sequence"] == single[first]["sequence"] + single[second]["sequence"]


def test_windows_cut_long_videos_and_c_never_pairs_a_video_with_itself(tmp_path):
    rows = [_clip("long", i, 2.0 * i) for i in range(9)] + [_clip("short", i, 2.0 * i) for i in range(3)]
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    build_icl([tmp_path / "t.parquet"], tmp_path / "a.jsonl", ICLConfig("a", max_clips=3))
    assert sorted(_read(tmp_path / "a.jsonl")) == ["long#0", "long#1", "long#2", "short"]
    report = build_icl([tmp_path / "t.parquet"], tmp_path / "c.jsonl", ICLConfig("c", max_clips=3))
    pairs = list(_read(tmp_path / "c.jsonl").values())
    assert len(pairs) == 1 and sorted(pairs[0]["videos"]) == ["long", "short"] and report.unpaired == 2
    with pytest.raises(ValueError, match="format must be one of"):
        ICLConfig("d")
    assert np.isclose(ICLConfig().drop_prob, 0.3)


def test_a_number_caption_column_is_named(tmp_path):
    """A table whose caption column holds integers (written by other tools) is not passed through as text."""
    import pyarrow as pa

    table = rows_to_table([_clip("v", i, 2.0 * i) for i in range(3)])
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array([1, 2, 3]))
    write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: column 'caption' must be text, got int64"):
        build_icl([tmp_path / "t.parquet"], tmp_path / "a.jsonl", ICLConfig("a"))
    assert not (tmp_path / "a.jsonl").exists()
