"""Results files and tables in the paper's column layout.

One JSON per evaluated task (schema below); tables are built from any list of those, so a single
run, a Hydra sweep (``eval.py -m task=a,b,c``) and a directory of old results print the same way.

Schema ``viclip.eval/1``::

    {"schema", "name" (task + non-default options), "task", "kind" (zeroshot | retrieval | linear | finetuned),
     "dataset" (column title), "metrics" {...}, "protocol" {...}, "checkpoint" {"path", "sha256", "model"},
     "data" {"annotation", "video_root", "listed", "evaluated", "skipped", ...},
     "world_size", "time_s" {...}, "created"}
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from hydra.experimental.callback import Callback

from viclip.atomic import atomic_write

SCHEMA = "viclip.eval/1"
REQUIRED_KEYS = ("schema", "name", "task", "kind", "dataset", "metrics", "protocol", "checkpoint", "data",
                 "world_size", "time_s", "created")
# Paper columns: Table 2 (zero-shot recognition: top-1, AVG), Table 4 (zero-shot retrieval: R@1
# text-to-video and video-to-text), Table 16 (linear probing: top-1, AVG), Table 3 (fine-tuned: top-1, top-5).
COLUMNS = {
    "zeroshot": ("Zero-shot action recognition (paper Table 2)", (("top-1", "top1"), ("AVG", "avg"))),
    "retrieval": ("Zero-shot video-text retrieval, R@1 (paper Table 4)", (("T2V", "t2v_r1"), ("V2T", "v2t_r1"))),
    "linear": ("Linear probing (paper Table 16)", (("top-1", "top1"), ("AVG", "avg"))),
    "finetuned": ("Fine-tuned action recognition (paper Table 3)", (("top-1", "top1"), ("top-5", "top5"))),
    "score": ("ViCLIP score: mean cosine similarity of each video with its prompt", (("mean", "mean"),)),
}
RETRIEVAL_DETAIL = ("r1", "r5", "r10", "medr", "meanr")
# What each table's columns measure, printed under it (percentages; ties count against the model).
COLUMN_NOTES = {
    "zeroshot": "top-1: % of videos whose own class scores highest; AVG: the mean of top-1 and top-5 accuracy "
                "(the paper's AVG, after CLIP and EVA-CLIP)",
    "retrieval": "T2V: % of texts whose video ranks first among all videos; V2T: % of videos with one of "
                 "their texts ranked first among all texts (Recall@1)",
    "linear": "top-1: % of validation videos classified right by a linear classifier on frozen embeddings; "
              "AVG: the mean of top-1 and top-5",
    "finetuned": "top-1 / top-5: % of videos whose class is the classifier's first / among its first five",
    "score": "mean: the mean cosine similarity of each video's embedding with its prompt's (-1 to 1)",
}


def write_results(results: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``{out_dir}/{name}.json`` atomically and return its path."""
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"results for {results.get('name')!r} miss keys {missing}")
    return atomic_write(Path(out_dir) / f"{results['name']}.json", json.dumps(results, indent=2, sort_keys=True) + "\n")


def write_per_video(results: dict, out_dir: str | os.PathLike) -> Path:
    """The per-video rows of a ViCLIP score run as ``{out_dir}/{name}.per_video.csv`` (video, prompt,
    similarity; empty for an unreadable video), beside its JSON, for a spreadsheet or pandas."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("video", "prompt", "similarity"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(results["data"]["per_video"])
    return atomic_write(Path(out_dir) / f"{results['name']}.per_video.csv", buf.getvalue())


def load_results(root: str | os.PathLike) -> list[dict]:
    """Every results JSON of this schema under ``root`` (e.g. a Hydra sweep directory), by path."""
    out = []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("schema") == SCHEMA:
            out.append(obj)
    return out


def row_label(result: dict) -> str:
    """What a table row stands for: the model and checkpoint, plus non-default options."""
    ckpt = result["checkpoint"]
    stem = Path(ckpt["path"]).name if ckpt.get("path") else "random-init"
    variant = result["name"][len(result["task"]):]
    return f"{ckpt['model']} {stem}{variant}"


def _grid(title: str, headers: list[str], sub: list[str], rows: list[list[str]]) -> str:
    """Column groups (one per header) of equal-width sub-columns, right-aligned; first column = row label."""
    per = len(sub) // len(headers)
    widths = [max(8, -(-(len(h) + 2) // per)) for h in headers]  # a sub-column width per group
    label_w = max(len(row[0]) for row in rows) + 2

    def line(label: str, cells: list[str]) -> str:
        return label.ljust(label_w) + "".join(c.rjust(widths[i // per]) for i, c in enumerate(cells))

    top = " " * label_w + "".join(h.rjust(w * per) for h, w in zip(headers, widths))
    return "\n".join([title, top, line("", sub), *(line(r[0], r[1:]) for r in rows)])


def format_table(results: Iterable[dict]) -> str:
    """One table per kind of task: a row per model/checkpoint/options, a column group per dataset in
    the order first seen; a missing cell prints '-'. Retrieval also gets a detail table with R@1/5/10,
    median and mean rank in both directions."""
    results = list(results)
    blocks = []
    for kind, (title, cols) in COLUMNS.items():
        of_kind = [r for r in results if r["kind"] == kind]
        if not of_kind:
            continue
        datasets = list(dict.fromkeys(r["dataset"] for r in of_kind))
        labels = list(dict.fromkeys(row_label(r) for r in of_kind))
        by_cell = {(row_label(r), r["dataset"]): r["metrics"] for r in of_kind}
        rows = []
        for label in labels:
            cells = []
            for ds in datasets:
                m = by_cell.get((label, ds))
                cells += [f"{m[key]:.2f}" if m else "-" for _, key in cols]
            rows.append([label, *cells])
        blocks.append(_grid(title, datasets, [h for _ in datasets for h, _ in cols], rows) + "\n"
                      + COLUMN_NOTES[kind])
        if kind == "retrieval":
            blocks.append(_retrieval_detail(of_kind))
        skipped = [f"{r['dataset']}: {r['data']['skipped']}" for r in of_kind if r["data"].get("skipped")]
        if skipped:
            blocks.append("unreadable videos skipped: " + ", ".join(skipped))
    return "\n\n".join(blocks)


def _retrieval_detail(results: list[dict]) -> str:
    headers = ["text-to-video", "video-to-text"]
    sub = ["R@1", "R@5", "R@10", "MdR", "MnR"] * 2
    rows = {}  # a repeated (dataset, row) keeps the last result, as the main table does
    for r in results:
        m = r["metrics"]
        label = f"{r['dataset']}  {row_label(r)}"
        rows[label] = [label, *[f"{m[f'{d}_{k}']:.1f}" for d in ("t2v", "v2t") for k in RETRIEVAL_DETAIL]]
    rows = list(rows.values())
    return _grid("Retrieval detail", headers, sub, rows)


class CombinedTable(Callback):
    """Hydra callback: after ``eval.py -m ...``, one table over every job's results in the sweep
    directory (also written there as ``table.txt``). Printed by rank 0 only."""

    def on_multirun_end(self, config, **kwargs) -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        results = load_results(sweep_dir)
        if not results:
            return
        table = format_table(results)
        atomic_write(sweep_dir / "table.txt", table + "\n")
        print("\n" + table, flush=True)
