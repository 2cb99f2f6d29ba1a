"""make_shards (clip table or subset -> training tars + sizes.json) and plot_stats on a real stage output."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from viclip.curation.sources import list_folder
from viclip.curation.stages import TableShard, clips_dir_of, run_stage, run_table_stage
from viclip.curation.stats import summarize
from viclip.curation.table import read_tables, write_table
from viclip.curation.writer import make_shards
from viclip.data.tars import iter_tar_samples
from viclip.data.video import read_video
from viclip.errors import DataError, OutputError
from viclip.testing import videos as tv

ROOT = Path(__file__).resolve().parents[1]
W, H, FPS = 96, 64, 25


def add_captions(shard: TableShard) -> tuple[pa.Table, dict]:
    """What caption_clips does, in miniature: a table stage that fills the caption column."""
    t = shard.table
    captions = [f"clip {c} of {v} with some words" for v, c in zip(t["video_id"].to_pylist(),
                                                                   t["clip_index"].to_pylist())]
    return t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions)), {"clips": t.num_rows}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """Split three videos of three moving scenes each, then caption them in a second (table) stage."""
    src = tmp_path_factory.mktemp("src")
    for i in range(3):
        scenes = [tv.pan_frames(30, W, H, 0.4, seed=10 * i), tv.lavfi_frames("testsrc2", 1.2, W, H, FPS),
                  tv.lavfi_frames("mandelbrot", 1.6, W, H, FPS)]
        tv.write_video(src / f"v{i}.mp4", np.concatenate(scenes), FPS)
    clips = tmp_path_factory.mktemp("clips")
    run_stage(list_folder(src), clips, videos_per_shard=2, workers=0, progress=False)
    captioned = tmp_path_factory.mktemp("captioned")
    run_table_stage(clips, captioned, lambda: add_captions, {"stage": "test captions"}, progress=False)
    return captioned


def test_subset_to_size_bounded_training_tars(stage, tmp_path):
    table = read_tables([stage])
    assert pc.sum(pc.equal(table["status"], "kept")).as_py() == 9
    subset = table.filter(pc.not_equal(table["clip_id"], "v1_00001"))  # a subset: one clip left out
    subset_path = tmp_path / "subset.parquet"
    write_table(subset, subset_path)
    sizes = make_shards([subset_path], clips_dir_of(stage), tmp_path / "shards", max_samples=3)
    assert sizes == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 2}
    assert json.loads((tmp_path / "shards" / "sizes.json").read_text()) == sizes
    seen = []
    for name in sizes:
        with open(tmp_path / "shards" / name, "rb") as f:
            for sample in iter_tar_samples(f):
                meta = json.loads(sample["json"])
                caption = f"clip {meta['clip_index']} of {meta['video_id']} with some words"
                assert sample["txt"].decode() == meta["caption"] == caption
                frames = read_video(sample["mp4"], num_frames=8, backend="pyav")  # what training reads
                assert frames.shape == (8, H, W, 3)
                seen.append(meta["clip_id"])
    assert sorted(seen) == sorted(r for r in subset["clip_id"].to_pylist() if r) and "v1_00001" not in seen
    # a caption stage directory records where the clips are: no clips_dir needed
    assert make_shards([stage], None, tmp_path / "all") == {"00000.tar": 9}


def test_missing_captions_are_an_error_unless_allowed(stage, tmp_path):
    table = read_tables([stage]).drop_columns(["caption"])
    with pytest.raises(DataError, match="caption column.*caption-clips.*--captions.*--caption-column.*--allow-emp"):
        make_shards(table, clips_dir_of(stage), tmp_path / "a")
    assert sum(make_shards(table, clips_dir_of(stage), tmp_path / "b", allow_empty_captions=True).values()) == 9
    broken = read_tables([stage]).set_column(read_tables([stage]).schema.get_field_index("clip_tar"), "clip_tar",
                                              pa.array(["nope.tar"] * read_tables([stage]).num_rows))
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        make_shards(broken, clips_dir_of(stage), tmp_path / "c")


def test_a_partial_captions_file_names_how_many_clips_it_left_out(stage, tmp_path):
    table = read_tables([stage]).drop_columns(["caption"])
    kept = [r["clip_id"] for r in table.to_pylist() if r["status"] == "kept"]
    (tmp_path / "mine.csv").write_text("clip_id,caption\n" + "".join(f"{c},a caption\n" for c in kept[:3]))
    with pytest.raises(DataError, match=rf"{len(kept) - 3} of {len(kept)} kept clips have no 'caption' \("
                                        rf".*mine.csv captions the others\), e.g. {kept[3]}, "):
        make_shards(table, clips_dir_of(stage), tmp_path / "a", captions=str(tmp_path / "mine.csv"))


def _keys_in_order(out):
    names = json.loads((out / "sizes.json").read_text())
    clips = []
    for name in names:
        with open(out / name, "rb") as f:
            clips += [json.loads(s["json"])["clip_id"] for s in iter_tar_samples(f)]
    return clips


def test_shards_mix_sources_in_a_seeded_global_order(stage, tmp_path):
    """Clips of one video do not sit together: the order is a seeded permutation over the whole input."""
    table_order = [r["clip_id"] for r in read_tables([stage]).to_pylist() if r["status"] == "kept"]
    make_shards([stage], None, tmp_path / "a", max_samples=4, seed=1, progress=False)
    make_shards([stage], None, tmp_path / "b", max_samples=4, seed=1, progress=False)
    make_shards([stage], None, tmp_path / "c", max_samples=4, seed=2, progress=False)
    make_shards([stage], None, tmp_path / "t", max_samples=4, global_shuffle=False, progress=False)
    a = _keys_in_order(tmp_path / "a")
    assert sorted(a) == sorted(table_order) and a != table_order
    assert a == _keys_in_order(tmp_path / "b") != _keys_in_order(tmp_path / "c")
    assert _keys_in_order(tmp_path / "t") == table_order
    # the first shard (4 clips) holds clips of more than one source video
    first = [k.rsplit("_", 1)[0] for k in a[:4]]
    assert len(set(first)) > 1


def test_output_over_an_input_is_refused(stage, tmp_path):
    """--out at the stage's own clip directory would replace its tars."""
    before = {p.name: p.stat().st_mtime_ns for p in clips_dir_of(stage).glob("*.tar")}
    with pytest.raises(OutputError, match="overlaps the input"):
        make_shards([stage], None, clips_dir_of(stage), progress=False)
    with pytest.raises(OutputError, match="overlaps the input"):
        make_shards([stage], None, stage, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in clips_dir_of(stage).glob("*.tar")} == before


@pytest.mark.parametrize("column", ["caption", "status"])
def test_a_number_column_is_named(stage, tmp_path, column):
    table = read_tables([stage])
    path = tmp_path / "t.parquet"
    write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(range(table.num_rows))), path)
    with pytest.raises(DataError, match=f"t.parquet: column '{column}' must be text, got int64"):
        make_shards([path], clips_dir_of(stage), tmp_path / "out", progress=False)


def test_a_table_without_its_tars_names_clips_dir(stage, tmp_path):
    write_table(read_tables([stage]), tmp_path / "alone.parquet")
    with pytest.raises(FileNotFoundError, match="--clips-dir"):
        make_shards([tmp_path / "alone.parquet"], None, tmp_path / "out", progress=False)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_own_captions_by_clip_id_or_span(stage, tmp_path, fmt):
    table = read_tables([stage]).drop_columns(["caption"])
    kept = [r for r in table.to_pylist() if r["status"] == "kept"]
    by_id = pa.table({"clip_id": [r["clip_id"] for r in kept], "caption": [f"mine {r['clip_id']}" for r in kept]})
    by_span = pa.table({"video_id": [r["video_id"] for r in kept], "start": [r["start"] for r in kept],
                        "end": [r["end"] for r in kept], "caption": [f"span {r['clip_id']}" for r in kept]})
    for name, captions in (("id", by_id), ("span", by_span)):
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "csv":
            import pyarrow.csv as pcsv
            pcsv.write_csv(captions, path)
        elif fmt == "json":
            path.write_text(json.dumps(captions.to_pylist()))
        else:
            write_table(captions, path)
        out = tmp_path / f"shards_{name}"
        make_shards(table, clips_dir_of(stage), out, captions=str(path), progress=False)
        for shard in json.loads((out / "sizes.json").read_text()):
            with open(out / shard, "rb") as f:
                for sample in iter_tar_samples(f):
                    clip = json.loads(sample["json"])["clip_id"]
                    assert sample["txt"].decode() == f"{'mine' if name == 'id' else 'span'} {clip}"


def test_plot_stats_writes_figures_and_summary(stage, tmp_path, capsys):
    argv = sys.argv
    sys.argv = ["plot_stats.py", "--input", str(stage), "--out", str(tmp_path / "stats")]
    try:
        runpy.run_path(str(ROOT / "tools" / "plot_stats.py"), run_name="__main__")
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "stats").glob("*.png"))
    assert names == ["caption_lengths.png", "clip_durations.png", "motion_mean.png", "motion_std.png",
                     "video_durations.png"]
    summary = json.loads((tmp_path / "stats" / "summary.json").read_text())
    assert summary["videos"] == 3 and summary["kept_clips"] == 9 and summary["caption_words_mean"] == 7
    assert summary["clip_duration_p10_p50_p90_s"][1] == pytest.approx(1.2)
    assert "kept_clips" in printed and (tmp_path / "stats" / "summary.txt").read_text().startswith("videos")


def test_summary_counts_categories_and_scores():
    table = pa.table({"video_id": ["a", "a", "b"], "status": ["kept", "kept", "kept"], "duration": [4.0, 12.0, 8.0],
                      "category": ["news", "news", "gaming"], "aesthetic": [4.0, 5.0, None],
                      "caption": ["one two", "w " * 12, None]})
    s = summarize(table)
    assert s["category_counts"] == {"news": 2, "gaming": 1} and s["aesthetic_mean"] == 4.5
    assert s["clips_0_to_10_s"] == pytest.approx(2 / 3) and s["captions_10_to_20_words"] == 0.5
