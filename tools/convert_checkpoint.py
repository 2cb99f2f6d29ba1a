"""Convert ViCLIP weights between the official .pth layout and safetensors, or build the initial
ViCLIP weights from a CLIP image-text state dict.

    python tools/convert_checkpoint.py ViClip-InternVid-10M-FLT.pth viclip_l14.safetensors
    python tools/convert_checkpoint.py viclip_l14.safetensors viclip_l14.pth --num-frames 16
    python tools/convert_checkpoint.py --from-clip ViT-L-14.bin --model vit_l14 init_l14.pth
"""

from __future__ import annotations

import argparse

from viclip.model import create_model, export_official, export_safetensors, init_from_clip, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="[source] destination (.pth = official layout, .safetensors)")
    parser.add_argument("--from-clip", metavar="CLIP_STATE_DICT", help="initialise from CLIP instead of a ViCLIP file")
    parser.add_argument("--model", help="vit_l14, vit_b16, tiny (default: read from the source file)")
    parser.add_argument("--num-frames", type=int, help="resample the temporal embedding to this many frames")
    args = parser.parse_args()
    if len(args.inputs) != (1 if args.from_clip else 2):
        parser.error("give SOURCE DESTINATION, or --from-clip CLIP DESTINATION")
    overrides = {"num_frames": args.num_frames} if args.num_frames else {}
    if args.from_clip:
        if not args.model:
            parser.error("--from-clip needs --model (vit_l14 or vit_b16)")
        model = create_model(args.model, **overrides)
        print(init_from_clip(model, args.from_clip))
    else:
        model = load_model(args.model, checkpoint=args.inputs[0], **overrides)
    destination = args.inputs[-1]
    export = export_safetensors if destination.endswith(".safetensors") else export_official
    print(f"wrote {export(model, destination)}")


if __name__ == "__main__":
    main()
