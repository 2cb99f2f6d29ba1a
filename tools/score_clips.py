"""Aesthetic and clip-caption similarity scores for the clips of a finished stage (usually captioned).

    python tools/score_clips.py --input captioned/ --out scored/ \
        --clip-weights /models/vit_l14_openai.bin --aesthetic-head /models/sac+logos+ava1-l14-linearMSE.pth \
        --viclip-checkpoint /models/ViClip-InternVid-10M-FLT.pth
    # frame-averaged CLIP similarity instead of ViCLIP; no aesthetic score:
    python tools/score_clips.py --input captioned/ --out scored/ --similarity clip --clip-weights W.bin

Adds aesthetic (max over --aesthetic-frames frames), aesthetic_frames, clip_text_sim (raw cosine)
and clip_text_model to each shard's table; resumable per shard, SLURM arrays via --task/--num-tasks.
"""

from __future__ import annotations

import argparse

from viclip.curation.quality import SIMILARITY_MODELS, ScoreConfig, run_scoring


def main() -> None:
    d = ScoreConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="finished stage directory (clip tables; tars found from it)")
    parser.add_argument("--out", required=True, help="output directory (one table per shard)")
    parser.add_argument("--clip-model", default=d["clip_model"].default, help="open_clip architecture")
    parser.add_argument("--clip-weights", help="open_clip state dict for --clip-model")
    parser.add_argument("--aesthetic-head", help="LAION aesthetic predictor weights (V1 linear or V2 MLP)")
    parser.add_argument("--aesthetic-frames", type=int, default=d["aesthetic_frames"].default)
    parser.add_argument("--similarity", default=d["similarity"].default, choices=SIMILARITY_MODELS)
    parser.add_argument("--viclip-checkpoint", help="ViCLIP weights (official .pth or .safetensors)")
    parser.add_argument("--viclip-model", help="ViCLIP size name (default: read from the checkpoint)")
    parser.add_argument("--model-id", help="clip_text_model value (default: derived from the model and weights)")
    parser.add_argument("--frame-size", type=int, default=d["frame_size"].default, help="decoded short side")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips-per-batch", type=int, default=d["clips_per_batch"].default)
    parser.add_argument("--workers", type=int, default=d["workers"].default, help="decoding processes (0: in-process)")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--num-tasks", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args()
    cfg = ScoreConfig(clip_model=a.clip_model, clip_weights=a.clip_weights, aesthetic_head=a.aesthetic_head,
                      aesthetic_frames=a.aesthetic_frames, similarity=a.similarity,
                      viclip_checkpoint=a.viclip_checkpoint, viclip_model=a.viclip_model, model_id=a.model_id,
                      frame_size=a.frame_size, dtype=a.dtype, device=a.device, clips_per_batch=a.clips_per_batch,
                      workers=a.workers)
    print(run_scoring(a.input, a.out, cfg, task=a.task, num_tasks=a.num_tasks, progress=not a.no_progress))


if __name__ == "__main__":
    main()
