"""InternVid JSONL path: released clips rebuilt at their timestamps from local sources, with captions and scores."""

import io
import json
import runpy
import sys
import tarfile
from pathlib import Path

import av
import pytest

from viclip.curation.sources import (
    annotated_sources,
    localize,
    parse_timestamp,
    read_annotations,
    read_file_list,
    read_id_map,
)
from viclip.curation.table import read_tables
from viclip.errors import DataError
from viclip.testing import videos as tv

ROOT = Path(__file__).resolve().parents[1]
FPS = 25


def run_tool(name: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [name, *args]
    try:
        runpy.run_path(str(ROOT / "tools" / name), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.fixture()
def release(tmp_path):
    """Two indexed sources (one via the id map, one via the template), one id with no file."""
    videos = tmp_path / "videos"
    videos.mkdir()
    tv.write_video(videos / "AAAAAAAAAAA.mp4", tv.index_frames(8 * FPS, 192, 96), FPS)
    tv.write_video(tmp_path / "elsewhere.mp4", tv.index_frames(6 * FPS, 192, 96, offset=1000), FPS)
    lines = [
        {"YoutubeID": "AAAAAAAAAAA", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.500",
         "Caption": "a man walks", "Aesthetic_Score": 4.5, "UMT_Score": 0.41, "lang": "en"},
        {"YoutubeID": "BBBBBBBBBBB", "Start_timestamp": "00:00:00.520", "End_timestamp": "00:00:03.000",
         "Caption": "a dog runs", "Aesthetic_Score": 5.25, "UMT_Score": 0.38},
        {"YoutubeID": "AAAAAAAAAAA", "Start_timestamp": "00:00:05.000", "End_timestamp": "00:00:07.480",
         "Caption": "the man sits"},
        {"YoutubeID": "CCCCCCCCCCC", "Start_timestamp": "00:00:00.000", "End_timestamp": "00:00:01.000",
         "Caption": "gone"},
    ]
    ann = tmp_path / "release.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    id_map = tmp_path / "ids.tsv"
    id_map.write_text(f"id\turi\nBBBBBBBBBBB\t{tmp_path / 'elsewhere.mp4'}\n")
    return tmp_path, ann, id_map, videos


def test_jsonl_rebuilds_clips_at_their_timestamps(release):
    tmp, ann, id_map, videos = release
    out = tmp / "clips"
    run_tool("fetch_clips.py", "--annotations", str(ann), "--id-map", str(id_map),
             "--template", f"{videos}/{{id}}.mp4", "--out", str(out), "--short-side", "48", "--workers", "0",
             "--fps", "0", "--no-progress")  # every source frame, to check each one's timestamp
    rows = {(r["video_id"], r["clip_index"]): r for r in read_tables([out]).to_pylist()}
    assert rows[("CCCCCCCCCCC", -1)]["status"] == "failed" and "not found" in rows[("CCCCCCCCCCC", -1)]["error"]
    a0, a1, b0 = rows[("AAAAAAAAAAA", 0)], rows[("AAAAAAAAAAA", 1)], rows[("BBBBBBBBBBB", 0)]
    assert (a0["caption"], a0["aesthetic"], a0["clip_text_sim"], json.loads(a0["extra"])) == (
        "a man walks", 4.5, pytest.approx(0.41), {"lang": "en"})
    assert a1["aesthetic"] is None and b0["clip_text_sim"] == pytest.approx(0.38)

    samples = {}
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as t:
            for m in t:
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    expected = {a0["clip_key"]: (25, 62), a1["clip_key"]: (125, 186), b0["clip_key"]: (1013, 1074)}
    for key, (first, last) in expected.items():
        with av.open(io.BytesIO(samples[key]["mp4"])) as c:
            idx = [tv.read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        assert idx == list(range(first, last + 1))
        meta = json.loads(samples[key]["json"])
        row = rows[(meta["video_id"], meta["clip_index"])]
        assert samples[key]["txt"].decode() == meta["caption"] == row["caption"]


def test_timestamps_and_bad_annotations_are_named(tmp_path):
    assert parse_timestamp("01:02:03.250") == 3723.25
    with pytest.raises(ValueError, match="HH:MM:SS"):
        parse_timestamp("62.5")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"YoutubeID": "x", "Start_timestamp": "00:00:02.000", "End_timestamp": "00:00:01.000", '
                   '"Caption": "c"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: End_timestamp"):
        read_annotations(bad)
    bad.write_text('{"YoutubeID": "x", "Caption": "c"}\n')
    with pytest.raises(ValueError, match="missing field"):
        read_annotations(bad)
    with pytest.raises(ValueError, match="id map or a URI template"):
        annotated_sources({"x": []})


@pytest.mark.parametrize("caption", [None, 12345, ["list", "caption"]])
def test_a_caption_that_is_not_a_string_is_named(tmp_path, caption):
    """A null, number or list Caption would be written as 'None', '12345', "['list', 'caption']"."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"YoutubeID": "x", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.000", '
                   '"Caption": "fine"}\n' + json.dumps({"YoutubeID": "x", "Start_timestamp": "00:00:03.000",
                                                          "End_timestamp": "00:00:04.000", "Caption": caption}))
    with pytest.raises(DataError, match=rf"bad.jsonl:2: Caption must be a string, got {type(caption).__name__}"):
        read_annotations(bad)


def test_id_maps_file_lists_and_fsspec_sources(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a": "/v/a.mp4"}))
    (tmp_path / "m.csv").write_text("a,/v/a.mp4\nb,s3://bucket/b.mp4\n")
    assert read_id_map(tmp_path / "m.json") == {"a": "/v/a.mp4"}
    assert read_id_map(tmp_path / "m.csv")["b"] == "s3://bucket/b.mp4"
    (tmp_path / "list.txt").write_text("# sources\n/data/x.mp4\nmyid\tmemory://clips/y.mp4\n")
    assert [(s.video_id, s.uri) for s in read_file_list(tmp_path / "list.txt")] == [
        ("x", "/data/x.mp4"), ("myid", "memory://clips/y.mp4")]
    import fsspec

    with fsspec.open("memory://clips/y.mp4", "wb") as f:
        f.write(b"video bytes")
    with localize("memory://clips/y.mp4") as local:
        assert Path(local).read_bytes() == b"video bytes"
    assert not Path(local).exists()  # fetched once into a temporary file, removed after use
