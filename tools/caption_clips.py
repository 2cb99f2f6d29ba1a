"""Multiscale captions for the clips of a finished stage (split_scenes or fetch_clips output).

    python tools/caption_clips.py --input clips/ --out captioned/ \
        --captioner-model /models/blip2-opt-2.7b --summariser-model /models/t5-base
    # a SLURM array: task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT, resumable per shard
    python tools/caption_clips.py --input clips/ --out captioned/ --task 3 --num-tasks 16

Adds caption_coarse (middle frame), frame_captions (at --fine-fps), caption_fine (their summary)
and caption (the summary of both) to each shard's table. Models are local directories or hub ids
already in the Hugging Face cache; --captioner/--summariser take "package.module:factory" to plug
in other models (factory(spec, device, dtype, batch_size) -> callable).
"""

from __future__ import annotations

import argparse

from viclip.curation.captioning import CaptionConfig, ModelSpec, run_captioning


def main() -> None:
    d = CaptionConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="finished stage directory (clip tables + tars)")
    parser.add_argument("--out", required=True, help="output directory (one table per shard)")
    parser.add_argument("--captioner", default=d.coarse.kind, help="image captioner kind (hf, or module:factory)")
    parser.add_argument("--captioner-model", default=d.coarse.path)
    parser.add_argument("--captioner-prompt", default=d.coarse.prompt)
    parser.add_argument("--fine-captioner", help="frame captioner kind (default: the coarse captioner)")
    parser.add_argument("--fine-captioner-model", help="frame captioner model (paper: Tag2Text)")
    parser.add_argument("--max-new-tokens", type=int, default=d.coarse.max_new_tokens)
    parser.add_argument("--summariser", default=d.summariser.kind, help="summariser kind (hf, or module:factory)")
    parser.add_argument("--summariser-model", default=d.summariser.path)
    parser.add_argument("--summariser-prefix", default=d.summariser.prompt)
    parser.add_argument("--summary-max-new-tokens", type=int, default=d.summariser.max_new_tokens)
    parser.add_argument("--summary-beams", type=int, default=d.summariser.num_beams)
    parser.add_argument("--fine-fps", type=float, default=d.fine_fps)
    parser.add_argument("--max-fine-frames", type=int, default=d.max_fine_frames)
    parser.add_argument("--frame-size", type=int, default=d.frame_size, help="decoded short side")
    parser.add_argument("--dtype", default=d.dtype, choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--images-per-batch", type=int, default=d.images_per_batch)
    parser.add_argument("--texts-per-batch", type=int, default=d.texts_per_batch)
    parser.add_argument("--clips-per-batch", type=int, default=d.clips_per_batch)
    parser.add_argument("--workers", type=int, default=d.workers, help="decoding processes (0: in-process)")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--num-tasks", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args()
    coarse = ModelSpec(a.captioner, a.captioner_model, a.captioner_prompt, a.max_new_tokens)
    fine = None
    if a.fine_captioner or a.fine_captioner_model:
        fine = ModelSpec(a.fine_captioner or a.captioner, a.fine_captioner_model or a.captioner_model,
                         a.captioner_prompt, a.max_new_tokens)
    cfg = CaptionConfig(coarse=coarse, fine=fine,
                        summariser=ModelSpec(a.summariser, a.summariser_model, a.summariser_prefix,
                                             a.summary_max_new_tokens, a.summary_beams),
                        fine_fps=a.fine_fps, max_fine_frames=a.max_fine_frames, frame_size=a.frame_size,
                        dtype=a.dtype, device=a.device, images_per_batch=a.images_per_batch,
                        texts_per_batch=a.texts_per_batch, clips_per_batch=a.clips_per_batch, workers=a.workers)
    print(run_captioning(a.input, a.out, cfg, task=a.task, num_tasks=a.num_tasks, progress=not a.no_progress))


if __name__ == "__main__":
    main()
