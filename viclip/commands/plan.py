"""A cost plan for a whole curation job: core-hours, device-hours and storage per stage, from measured rates.

    viclip-curate plan --videos 7000000 --hours 760000 --split-dir sample/clips --embed-dir sample/emb \
        --device "cpu (2 cores)" --save-rates rates_cpu.json
    viclip-curate plan --videos 7000000 --hours 760000 --rates rates_cpu.json rates_h100.json --gpus 64

Rates come from a sample run's stage directories (their stats files: split-scenes' source seconds per CPU
second, clips per source hour and bytes per clip; the model stages' clips per second on --device) or from
rates files (JSON, as --save-rates writes; later files override earlier ones stage by stage, so a GPU run's
rates plan the model stages). A stage without a rate prints "not measured".
"""

from __future__ import annotations

import json

from viclip.atomic import atomic_write
from viclip.commands import StageParser, one_line_errors
from viclip.curation.plan import calibrate, format_plan, plan, read_rates
from viclip.errors import ConfigError


@one_line_errors
def main() -> None:
    parser = StageParser(__doc__)
    parser.add_argument("--videos", type=int, required=True, help="source videos of the whole job")
    parser.add_argument("--hours", type=float, required=True, help="hours of source video of the whole job")
    parser.add_argument("--clips", type=float, default=None,
                        help="clips for the model stages (default: hours x the split sample's clips per hour)")
    for stage, about in (("split", "split-scenes"), ("caption", "caption-clips"), ("score", "score-clips"),
                         ("embed", "embed-clips")):
        parser.add_argument(f"--{stage}-dir", default=None, help=f"a finished {about} sample run to calibrate from")
    parser.add_argument("--device", default="cpu", help="what the model stages' sample runs ran on (a name: "
                                                        "'cpu (2 cores)', 'H100'); their hours are counted in it")
    parser.add_argument("--rates", nargs="+", default=(), help="rates files (JSON); the sample dirs override them")
    parser.add_argument("--save-rates", default=None, help="write the rates used to this JSON file")
    parser.add_argument("--cores", type=int, default=None, help="CPU cores for splitting: wall-clock days too")
    parser.add_argument("--gpus", type=int, default=None, help="devices for the model stages: wall-clock days too")
    args = parser.parse_args()
    for name in ("videos", "hours"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be > 0, got {getattr(args, name)}")
    rates = read_rates(args.rates)
    rates.update(calibrate({"split": args.split_dir, "caption": args.caption_dir, "score": args.score_dir,
                            "embed": args.embed_dir}, args.device))
    if args.save_rates:
        atomic_write(args.save_rates, json.dumps(rates, indent=1, sort_keys=True))
    print(format_plan(plan(args.videos, args.hours, rates, args.clips), args.cores, args.gpus))


if __name__ == "__main__":
    main()
