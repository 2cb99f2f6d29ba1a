"""Dataset statistics of a clip table in the style of the paper's Figures 3-4, plus a summary table.

Histograms of source durations, clip durations, caption lengths, aesthetic and clip-caption
similarity scores, counts per category or language when those columns exist, and the motion
statistics behind the still/dynamic filters (to tune their thresholds on a sample of real sources).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from viclip.atomic import atomic_path, atomic_write, join


def _column(table: pa.Table, name: str, mask: np.ndarray | None = None) -> np.ndarray | None:
    """A numeric column as float64 with nulls dropped (after ``mask``), or None when absent or empty."""
    if name not in table.column_names:
        return None
    values = table[name].cast(pa.float64()).to_numpy(zero_copy_only=False)
    if mask is not None:
        values = values[mask]
    values = values[~np.isnan(values)]
    return values if values.size else None


def _status_mask(table: pa.Table, status: str) -> np.ndarray:
    if "status" not in table.column_names:
        return np.ones(table.num_rows, dtype=bool)
    return pc.equal(table["status"], status).fill_null(False).to_numpy(zero_copy_only=False)


def caption_words(table: pa.Table, mask: np.ndarray) -> np.ndarray | None:
    if "caption" not in table.column_names:
        return None
    captions = table["caption"].to_numpy(zero_copy_only=False)[mask]
    words = np.array([len(c.split()) for c in captions if isinstance(c, str) and c.strip()], dtype=float)
    return words if words.size else None


def per_video(table: pa.Table, name: str) -> np.ndarray | None:
    """One value per source video (e.g. its duration), from the first row that has it."""
    if name not in table.column_names or "video_id" not in table.column_names:
        return None
    seen: dict[str, float] = {}
    for vid, v in zip(table["video_id"].to_pylist(), table[name].to_pylist()):
        if v is not None and vid not in seen:
            seen[vid] = float(v)
    return np.fromiter(seen.values(), dtype=float) if seen else None


def _counts(table: pa.Table, name: str) -> dict[str, int]:
    if name not in table.column_names:
        return {}
    counts = pc.value_counts(table[name].drop_null()).to_pylist()
    return dict(sorted(((str(c["values"]), int(c["counts"])) for c in counts), key=lambda kv: -kv[1]))


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts and distribution figures for a clip table (kept clips unless said otherwise)."""
    kept = _status_mask(table, "kept")
    s: dict[str, Any] = {
        "videos": len(set(table["video_id"].to_pylist())) if "video_id" in table.column_names else None,
        "failed_videos": int(_status_mask(table, "failed").sum()) if "status" in table.column_names else 0,
        "candidate_clips": int(table.num_rows - (_status_mask(table, "failed").sum()
                                                 if "status" in table.column_names else 0)),
        "kept_clips": int(kept.sum()),
        "failed_by_reason": _counts(table.filter(pa.array(_status_mask(table, "failed"))), "reason")
        if "reason" in table.column_names and "status" in table.column_names else {},
        "dropped": _counts(table.filter(pa.array(_status_mask(table, "dropped"))), "reason")
        if "reason" in table.column_names else {},
    }
    src = per_video(table, "source_duration")
    if src is not None:
        s["source_hours"] = float(src.sum() / 3600)
        s["source_duration_mean_s"] = float(src.mean())
        s["sources_up_to_5_min"] = float((src <= 300).mean())
    dur = _column(table, "duration", kept)
    if dur is not None:
        s["kept_hours"] = float(dur.sum() / 3600)
        s["clip_duration_mean_s"] = float(dur.mean())
        s["clip_duration_p10_p50_p90_s"] = [float(x) for x in np.percentile(dur, [10, 50, 90])]
        s["clips_0_to_10_s"] = float((dur <= 10).mean())  # the paper reports 85 %
    words = caption_words(table, kept)
    if words is not None:
        s["caption_words_mean"] = float(words.mean())
        s["captions_10_to_20_words"] = float(((words >= 10) & (words <= 20)).mean())  # paper: about half
    for name in ("aesthetic", "clip_text_sim", "motion_mean", "motion_std"):
        values = _column(table, name, kept)
        if values is not None:
            s[f"{name}_mean"] = float(values.mean())
    for name in ("category", "language"):
        counts = _counts(table.filter(pa.array(kept)), name)
        if counts:
            s[f"{name}_counts"] = counts
    return s


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, list):
            v = ", ".join(f"{x:.3g}" for x in v)
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) or "-"
        lines.append(f"{k:32s} {v}")
    return "\n".join(lines)


def _hist(ax, values: np.ndarray, title: str, xlabel: str, bins: Any = 30, **kw) -> None:
    weights = np.full(values.shape, 100.0 / values.size)
    ax.hist(values, bins=bins, weights=weights, color="#4c72b0", edgecolor="white", **kw)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of total")


def plot_stats(table: pa.Table, out_dir: str | os.PathLike) -> list[str]:
    """Write one PNG per available statistic plus ``summary.json``/``summary.txt`` under ``out_dir`` (a
    local directory or an fsspec URL); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = _status_mask(table, "kept")
    figures: list[tuple[str, Any]] = []
    src = per_video(table, "source_duration")
    if src is not None:
        figures.append(("video_durations", lambda ax: _hist(ax, src / 60, "Source video durations", "minutes")))
    dur = _column(table, "duration", kept)
    if dur is not None:
        bins = np.arange(0, max(10.0, np.ceil(dur.max() / 5) * 5) + 5, 5)
        figures.append(("clip_durations", lambda ax: _hist(ax, dur, "Clip durations", "seconds", bins)))
    words = caption_words(table, kept)
    if words is not None:
        figures.append(("caption_lengths", lambda ax: _hist(ax, words, "Caption lengths", "words",
                                                            np.arange(0, words.max() + 2))))
    for name, title in (("aesthetic", "Aesthetic scores"), ("clip_text_sim", "Clip-caption similarity")):
        values = _column(table, name, kept)
        if values is not None:
            figures.append((name, lambda ax, v=values, t=title: _hist(ax, v, t, "score")))
    for name in ("category", "language"):
        counts = _counts(table.filter(pa.array(kept)), name)
        if counts:
            def bars(ax, c=counts, n=name):
                ax.barh(list(c)[::-1], list(c.values())[::-1], color="#4c72b0")
                ax.set_title(f"Clips per {n}")
                ax.set_xlabel("clips")
            figures.append((f"{name}_counts", bars))
    candidates = ~_status_mask(table, "failed")
    for name in ("motion_mean", "motion_std"):
        values = _column(table, name, candidates)
        if values is not None:
            figures.append((name, lambda ax, v=values, n=name: _hist(
                ax, np.log10(v + 1e-2), f"{n} of all candidate clips", "log10 grey levels")))

    paths = []
    for name, draw in figures:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        draw(ax)
        fig.tight_layout()
        path = join(out_dir, f"{name}.png")
        with atomic_path(path, durable=False) as tmp:  # figures and summaries are redone from the table
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        paths.append(path)
    summary = summarize(table)
    atomic_write(join(out_dir, "summary.json"), json.dumps(summary, indent=1), durable=False)
    atomic_write(join(out_dir, "summary.txt"), format_summary(summary) + "\n", durable=False)
    return paths
