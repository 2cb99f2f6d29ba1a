"""Results files and the paper-layout table, from hand-written results."""

import json

import pytest

from viclip.eval.report import SCHEMA, format_table, load_results, write_results


def _result(task, kind, dataset, metrics, name=None, skipped=0, path="/ckpt/ViCLIP-L_InternVid-FLT-10M.pth"):
    return {
        "schema": SCHEMA, "name": name or task, "task": task, "kind": kind, "dataset": dataset, "metrics": metrics,
        "protocol": {"num_frames": 8}, "checkpoint": {"path": path, "sha256": "ab" * 32, "model": "vit_l14"},
        "data": {"listed": 10, "evaluated": 10 - skipped, "skipped": skipped}, "world_size": 1,
        "time_s": {"total": 1.0}, "created": "2026-11-01T00:00:00",
    }


def test_write_and_load_roundtrip(tmp_path):
    res = _result("zeroshot_k400", "zeroshot", "K400", {"top1": 64.8, "top5": 86.6, "avg": 75.7})
    path = write_results(res, tmp_path / "a")
    assert path.name == "zeroshot_k400.json" and json.loads(path.read_text()) == res
    (tmp_path / "a" / "other.json").write_text('{"not": "ours"}')
    assert load_results(tmp_path) == [res]
    with pytest.raises(ValueError, match="miss keys"):
        write_results({"name": "x"}, tmp_path)


def test_table_has_paper_columns_rows_per_variant_and_skips():
    results = [
        _result("zeroshot_k400", "zeroshot", "K400", {"top1": 64.8, "top5": 86.6, "avg": 75.7}),
        _result("zeroshot_k600", "zeroshot", "K600", {"top1": 62.2, "top5": 84.86, "avg": 73.53}, skipped=2),
        _result("zeroshot_k400", "zeroshot", "K400", {"top1": 60.0, "top5": 80.0, "avg": 70.0},
                name="zeroshot_k400+embed"),
        _result("retrieval_msrvtt", "retrieval", "MSR-VTT",
                {f"{d}_{k}": v for d in ("t2v", "v2t") for k, v in
                 zip(("r1", "r5", "r10", "medr", "meanr"), (42.4, 67.0, 76.0, 2.0, 20.5))}),
    ]
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("Zero-shot action recognition")
    assert "K400" in lines[1] and "K600" in lines[1] and lines[2].split() == ["top-1", "AVG", "top-1", "AVG"]
    assert lines[3].split()[-4:] == ["64.80", "75.70", "62.20", "73.53"]
    assert lines[4].split()[-4:] == ["60.00", "70.00", "-", "-"] and "+embed" in lines[4]
    assert "unreadable videos skipped: K600: 2" in table
    assert "R@1 (paper Table 4)" in table and "MSR-VTT" in table
    retrieval_row = next(line for line in lines if line.startswith("vit_l14") and "42.40" in line)
    assert retrieval_row.split()[-2:] == ["42.40", "42.40"]
    assert "Retrieval detail" in table and "20.5" in table
