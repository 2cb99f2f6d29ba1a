"""DIV / FLT / Aes / random subsets over parquet clip tables, checked against direct computations."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from viclip.curation.subsets import SubsetSpec, build_subset, div_sample, source_codes
from viclip.curation.table import rows_to_table, write_table
from viclip.errors import ConfigError, DataError, OutputError


def official_div(data: list[dict], num: int) -> list[dict]:
    """The official div_sampling.py procedure, statement for statement, on a list of dicts."""
    video_id_counter = Counter([x["video"].split("/")[-1][:11] for x in data])
    sampling_weights = [1.0 / video_id_counter[x["video"].split("/")[-1][:11]] for x in data]
    np.random.seed(42)
    sampling_weights = np.array(sampling_weights)
    sampling_weights = sampling_weights / sampling_weights.sum()
    sampled_index = np.random.choice(len(data), num, replace=False, p=sampling_weights)
    return [data[i] for i in sampled_index]


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(rng.choice(list(alphabet), 11))


def _official_like_rows(seed: int = 0, videos: int = 60) -> list[dict]:
    """Clips named like the release (``{id}_{start}_{end}.mp4``), skewed clip counts, interleaved sources."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(videos):
        yid = _youtube_id(rng)
        for c in range(int(rng.zipf(1.6)) % 40 + 1):
            rows.append({"video": f"clips/{v % 3}/{yid}_{c * 10:06d}_{c * 10 + 7:06d}.mp4",
                         "caption": f"clip {c} of {yid}", "status": "kept"})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def _write(rows: list[dict], path, schema: pa.Schema | None = None) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _by_rank(path) -> pa.Table:
    table = pq.read_table(path)
    return table.take(np.argsort(table.column("subset_rank").to_numpy()))


def test_div_matches_the_official_procedure_across_files_and_status(tmp_path):
    rows = _official_like_rows()
    dropped = [{"video": f"clips/x/{i:011d}_000000_000001.mp4", "caption": "", "status": "dropped"} for i in range(9)]
    # the table is split over two shards and has dropped rows in between: neither may change the pool order
    part1 = rows[:150] + dropped[:5]
    part2 = dropped[5:] + rows[150:]
    _write(part1, tmp_path / "00000.parquet")
    _write(part2, tmp_path / "00001.parquet")
    num = len(rows) // 3
    expected = official_div(rows, num)

    spec = SubsetSpec("div", num=num, source_column="video", source_prefix=11)
    report = build_subset([tmp_path / "00000.parquet", tmp_path / "00001.parquet"], tmp_path / "div.parquet", spec)
    got = _by_rank(tmp_path / "div.parquet")
    assert got.column("video").to_pylist() == [x["video"] for x in expected]
    assert got.column("caption").to_pylist() == [x["caption"] for x in expected]
    assert report.pool == len(rows) and report.selected == num and report.rows == len(rows) + len(dropped)
    # written in input order (one tar's rows stay together), the rank restores the official order
    in_order = pq.read_table(tmp_path / "div.parquet").column("video").to_pylist()
    position = {x["video"]: i for i, x in enumerate(rows)}
    assert [position[v] for v in in_order] == sorted(position[v] for v in in_order)
    saved = json.loads((tmp_path / "div.parquet.json").read_text())
    assert saved["spec"]["rule"] == "div" and saved["selected"] == num


def test_source_codes_use_the_base_name_prefix_and_stay_consistent_across_batches():
    codes: dict[str, int] = {}
    a = source_codes(pa.array(["a/b/AAAAAAAAAAA_1.mp4", "BBBBBBBBBBB_2.mp4", "x/AAAAAAAAAAA_3.mp4"]), 11, codes)
    b = source_codes(pa.chunked_array([["y/BBBBBBBBBBB_9.mp4"], ["CCCCCCCCCCCzz"]]), 11, codes)
    assert a.tolist() == [0, 1, 0] and b.tolist() == [1, 2]
    assert source_codes(pa.array(["v1", "v10", "v1"]), None).tolist() == [0, 1, 0]


def test_div_balances_sources_by_inverse_frequency():
    # 3 groups of 10 sources with 2, 20 and 200 clips: every source has the same total weight
    sizes = [2] * 10 + [20] * 10 + [200] * 10
    codes = np.repeat(np.arange(30), sizes)
    rng = np.random.default_rng(0)
    codes = codes[rng.permutation(len(codes))]
    draws = np.array([codes[div_sample(codes, 1, seed=s)[0]] for s in range(3000)])
    observed = np.bincount(draws, minlength=30)
    chi2 = float(((observed - 100.0) ** 2 / 100.0).sum())
    assert chi2 < 58.3  # chi-square, 29 dof, p = 0.001
    # a uniform draw over clips would put ~90 % of picks on the 200-clip sources
    assert 0.25 < observed[20:].sum() / 3000 < 0.42
    # larger draws keep the group shares near a third each (without replacement, small sources saturate last)
    picked = codes[div_sample(codes, 15, seed=7)]
    assert len(set(picked.tolist())) >= 11


def _scored_rows() -> list[dict]:
    rng = np.random.default_rng(3)
    rows = []
    durations = [0.5, 0.999, 1.0, 5.0, 60.0, 120.0, 120.01, 300.0]
    for v in range(40):
        for c in range(int(rng.integers(1, 8))):
            d = durations[(v + c) % len(durations)] if (v + c) % 3 == 0 else float(rng.uniform(1.5, 30))
            sim = None if (v * 7 + c) % 23 == 0 else float(rng.uniform(0.1, 0.5))
            aes = None if (v * 5 + c) % 19 == 0 else float(rng.choice([3.999, 4.0, rng.uniform(2, 7)]))
            rows.append({"video_id": f"vid{v:03d}", "clip_id": f"vid{v:03d}_{c}", "status": "kept",
                         "start": 0.0, "end": d, "duration": d, "clip_text_sim": sim, "aesthetic": aes})
    rows.insert(5, {"video_id": "gone", "clip_id": "gone_0", "status": "dropped", "duration": 5.0,
                    "clip_text_sim": 0.99, "aesthetic": 9.0})
    return rows


def test_flt_keeps_exactly_the_filtered_top_fraction_then_div(tmp_path):
    rows = _scored_rows()
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    kept = [r for r in rows if r["status"] == "kept"]
    sims = np.array([np.nan if r["clip_text_sim"] is None else r["clip_text_sim"] for r in kept], dtype=np.float32)
    dur = np.array([r["duration"] for r in kept])
    ok = (dur >= 1.0) & (dur <= 120.0) & ~np.isnan(sims)
    threshold = np.quantile(sims[ok].astype(np.float64), 0.7)
    survivors = [r for r, keep in zip(kept, ok & (sims >= threshold)) if keep]
    assert 0 < len(survivors) < ok.sum()
    num = len(survivors) // 2
    expected = official_div([{"video": r["video_id"], **r} for r in survivors], num)

    report = build_subset([tmp_path / "t.parquet"], tmp_path / "flt.parquet", SubsetSpec("flt", num=num))
    assert _by_rank(tmp_path / "flt.parquet").column("clip_id").to_pylist() == [r["clip_id"] for r in expected]
    assert report.counts["after_filters"] == len(survivors)

    # a percentile rule: rescaling the score (e.g. CLIPScore = 2.5 x cosine) selects the same rows
    for r in rows:
        if r["clip_text_sim"] is not None:
            r["clip_text_sim"] = 2.5 * r["clip_text_sim"] + 1.0
    write_table(rows_to_table(rows), tmp_path / "scaled.parquet")
    build_subset([tmp_path / "scaled.parquet"], tmp_path / "flt2.parquet", SubsetSpec("flt", num=num))
    assert (_by_rank(tmp_path / "flt2.parquet").column("clip_id").to_pylist()
            == [r["clip_id"] for r in expected])


def test_aes_keeps_exactly_scores_of_four_and_above(tmp_path):
    rows = _scored_rows()
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    expected = [r["clip_id"] for r in rows
                if r["status"] == "kept" and r["aesthetic"] is not None and np.float32(r["aesthetic"]) >= 4.0]
    assert any(r["aesthetic"] == 3.999 for r in rows) and any(r["aesthetic"] == 4.0 for r in rows)
    build_subset([tmp_path / "t.parquet"], tmp_path / "aes.parquet", SubsetSpec("aes"))
    out = pq.read_table(tmp_path / "aes.parquet")
    assert out.column("clip_id").to_pylist() == expected
    assert out.schema.field("aesthetic").type == pa.float32()  # columns keep their types


def test_random_subset_is_seeded_uniform_without_replacement(tmp_path):
    rows = _scored_rows()
    write_table(rows_to_table(rows), tmp_path / "t.parquet")
    kept = [r["clip_id"] for r in rows if r["status"] == "kept"]
    build_subset([tmp_path / "t.parquet"], tmp_path / "r.parquet", SubsetSpec("random", num=20, seed=5))
    got = _by_rank(tmp_path / "r.parquet").column("clip_id").to_pylist()
    assert got == [kept[i] for i in np.random.RandomState(5).choice(len(kept), 20, replace=False)]
    assert len(set(got)) == 20


def test_subset_errors_name_the_problem(tmp_path):
    write_table(rows_to_table(_scored_rows()), tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match="cannot draw --num 100000"):
        build_subset([tmp_path / "t.parquet"], tmp_path / "o.parquet", SubsetSpec("div", num=100000))
    with pytest.raises(DataError, match="needs columns"):
        build_subset([tmp_path / "t.parquet"], tmp_path / "o.parquet", SubsetSpec("div", num=1, source_column="video"))
    with pytest.raises(ConfigError, match="rule must be one of"):
        SubsetSpec("best")
    assert not (tmp_path / "o.parquet").exists()


def test_output_over_an_input_table_is_refused(tmp_path):
    """--out naming a stage's own 00000.parquet would overwrite it (10 rows became 2)."""
    stage = tmp_path / "stage"
    stage.mkdir()
    write_table(rows_to_table(_scored_rows()), stage / "00000.parquet")
    (stage / "00000.stats.json").write_text("{}")
    rows = pq.read_metadata(stage / "00000.parquet").num_rows
    for out in (stage / "00000.parquet", stage / "subset.parquet"):
        with pytest.raises(OutputError, match="overlaps the input"):
            build_subset([stage], out, SubsetSpec("random", num=2))
    assert pq.read_metadata(stage / "00000.parquet").num_rows == rows and not (stage / "subset.parquet").exists()


def test_a_text_aesthetic_column_is_named(tmp_path):
    rows = [{**r, "aesthetic": None} for r in _scored_rows()]
    table = rows_to_table(rows)
    table = table.set_column(table.schema.get_field_index("aesthetic"), "aesthetic",
                             pa.array(["5.0"] * table.num_rows))
    write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: column 'aesthetic' must be numeric, got string"):
        build_subset([tmp_path / "t.parquet"], tmp_path / "o.parquet", SubsetSpec("aes"))


def _build_subset_main(monkeypatch, *argv) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "build_subset.py"
    spec = importlib.util.spec_from_file_location("build_subset", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr("sys.argv", [str(path), *map(str, argv)])
    tool.main()


def test_documented_div_command_on_an_annotation_table_without_status(tmp_path, monkeypatch, capsys):
    # the release's annotations: file names and captions, no status column (every clip is a candidate)
    rows = [{k: v for k, v in r.items() if k != "status"} for r in _official_like_rows(seed=3)]
    _write(rows, tmp_path / "anno.parquet")
    num = len(rows) // 4
    _build_subset_main(monkeypatch, "--input", tmp_path / "anno.parquet", "--rule", "div", "--num", num,
                       "--source-column", "video", "--source-prefix", 11, "--out", tmp_path / "d.parquet")
    assert _by_rank(tmp_path / "d.parquet").column("video").to_pylist() == [x["video"] for x in official_div(rows, num)]
    said = capsys.readouterr().out
    assert said.startswith(f"{num} of {len(rows)} kept clips selected by rule div") and "report in" in said
    assert json.loads((tmp_path / "d.parquet.json").read_text())["pool"] == len(rows)

    with pytest.raises(SystemExit) as exit_:  # a missing column is one line naming it, not a traceback
        _build_subset_main(monkeypatch, "--input", tmp_path / "anno.parquet", "--rule", "div", "--num", 1,
                           "--out", tmp_path / "e.parquet")
    assert "needs columns ['video_id']" in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    with pytest.raises(SystemExit) as exit_:
        _build_subset_main(monkeypatch, "--input", tmp_path / "nope.parquet", "--rule", "aes", "--out", tmp_path / "f")
    assert str(exit_.value.code) == f"build_subset.py: error: clip table not found: {tmp_path / 'nope.parquet'}"
