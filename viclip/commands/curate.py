"""``viclip-curate <stage> [options]``: one command for the curation stages, ``<stage> --help`` for each.

One command with a subcommand per stage (as ``huggingface-cli download``, ``accelerate launch``;
video2dataset is one command too) keeps the twelve related stages under one name. Training and evaluation
stay separate commands (``viclip-train``, ``viclip-eval``, like ``fairseq-train``/``fairseq-hydra-train``)
because each is a Hydra app that parses the whole command line itself. From a clone,
``python tools/<stage, with underscores>.py`` runs the same stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# stage -> (module of viclip.commands, what it does)
STAGES = {
    "collect-sources": ("collect_sources", "candidate YouTube videos from search queries (for split-scenes --list)"),
    "split-scenes": ("split_scenes", "scene cuts, still/dynamic filters, re-encoded clips + clip tables"),
    "fetch-clips": ("fetch_clips", "rebuild released InternVid clips from an annotation JSONL"),
    "caption-clips": ("caption_clips", "coarse (BLIP-2) + fine (frame captions fused by T5) captions"),
    "score-clips": ("score_clips", "LAION aesthetic score, clip-caption similarity"),
    "embed-clips": ("embed_clips", "ViCLIP video and caption embeddings as parquet shards (torchrun-aware)"),
    "dedup-clips": ("dedup_clips", "near-duplicate groups and evaluation leakage flags (for build-subset --exclude)"),
    "build-subset": ("build_subset", "DIV / FLT / Aes / random-N subsets"),
    "export-subset": ("export_subset", "a subset's clips as mp4 files + a CSV for text-to-video trainers"),
    "make-shards": ("make_shards", "training tars + sizes.json"),
    "make-icl": ("make_icl", "interleaved video-text sequences"),
    "plot-stats": ("plot_stats", "the paper's Figures 3-4 and a summary for any clip table"),
    "plan": ("plan", "core-hours, GPU-hours and storage of a whole job from a sample run's measured rates"),
    "make-synthetic": ("make_synthetic", "the synthetic demo data: training shards, zero-shot and retrieval sets"),
}


def main() -> None:
    """Dispatch to the stage's ``main`` with the rest of the command line."""
    prog = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {name:16s}{about}" for name, (_, about) in STAGES.items()))
    parser.add_argument("stage", choices=STAGES, metavar="STAGE", help="one of the stages below")
    stage = parser.parse_args(sys.argv[1:2]).stage
    # The stage parses sys.argv itself; its usage and error lines then read "viclip-curate <stage>".
    sys.argv = [f"{prog} {stage}", *sys.argv[2:]]
    importlib.import_module(f"viclip.commands.{STAGES[stage][0]}").main()


if __name__ == "__main__":
    main()
