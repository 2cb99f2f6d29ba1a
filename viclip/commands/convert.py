"""Convert ViCLIP weights between the official .pth layout, safetensors and a Hugging Face-style
folder (config.json + model.safetensors), or build the initial ViCLIP weights from CLIP.

    viclip-convert --input ViClip-InternVid-10M-FLT.pth --out viclip_l14.safetensors
    viclip-convert --input ViClip-InternVid-10M-FLT.pth --out viclip-l14/     # a folder, as push_to_hub uploads
    viclip-convert --input hf-hub:ORG/NAME --out viclip_l14.pth --num-frames 16
    viclip-convert --input openai --from-clip --model vit_l14 --out init_l14.pth

--out ending in .pth is the official layout, in .safetensors one file, anything else a folder.
With --from-clip, --input is CLIP weights: a file (a state dict or OpenAI's TorchScript .pt) or an
open_clip pretrained tag of the --model's architecture (openai, laion2b_s32b_b82k, ...).
"""

from __future__ import annotations

import argparse

from viclip.commands import one_line_errors
from viclip.curation.cli import add_options, values_from_args
from viclip.model import list_models
from viclip.model.hub import convert_weights


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="ViCLIP weights (.pth, .safetensors, a pretrained folder, hf-hub:ORG/NAME); "
                             "with --from-clip, CLIP weights (a file or an open_clip tag)")
    parser.add_argument("--out", required=True, help="destination: *.pth, *.safetensors or a folder")
    add_options(parser, convert_weights, "conversion", skip=("source", "destination"),
                choices={"model": list_models()})
    args = parser.parse_args()
    path, report = convert_weights(args.input, args.out, **values_from_args(convert_weights, args))
    if report is not None:
        print(report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
