"""Build the Kinetics-710 lists (paper appendix E.2): K400/600/700 classes merged by normalised name,
training clips merged by YouTube id, every clip of an evaluation list removed from training.

    python tools/make_k710.py --out data/k710 --video-root data/kinetics \\
        --k400-train k400/train.csv --k400-eval k400/val.csv k400/test.csv \\
        --k400-videos data/kinetics/k400/train  (and likewise --k600-*, --k700-*)

Label files: one class a line in the version's label order; by default the public lists shipped in the
package (alphabetical: the sorted labels the eval tasks use). --k710-classes orders the merged classes
(e.g. as an external K710 checkpoint's head; `mmaction2` names the packaged mmaction2 list).
The first --kNNN-eval list of each version joins K710's val.json; all of them are kept out of training.
Writes classes.txt, train.json, val.json and label_map.json (ft_k710, then ft_k710_k400's head_map).
"""

from __future__ import annotations

import argparse
import json

from viclip.commands import one_line_errors
from viclip.data.annotations import KINETICS_PATTERN
from viclip.finetune.k710 import SOURCES, KineticsSource, build_k710, packaged_classes


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--video-root", help="directory the written video paths are relative to "
                                             "(default: the common parent of the --kNNN-videos)")
    parser.add_argument("--k710-classes", help="the K710 class order: a file of every merged class, one a line, "
                                               "or `mmaction2` (default: first appearance, K400's first)")
    for v in SOURCES:
        group = parser.add_argument_group(v.upper())
        group.add_argument(f"--{v}-classes", default=str(packaged_classes(v)),
                           help="class names, one a line, in label order (default: the public list, packaged)")
        group.add_argument(f"--{v}-train", help="training list: a Kinetics CSV or a JSON list")
        group.add_argument(f"--{v}-videos", help="directory of the training list's videos")
        group.add_argument(f"--{v}-eval", nargs="*", default=[], help="val (first) and test lists to keep out")
        group.add_argument(f"--{v}-pattern", default=KINETICS_PATTERN, help="CSV file name pattern")
    args = vars(parser.parse_args())
    sources = []
    for v in SOURCES:
        given = {k: args[f"{v}_{k}"] for k in ("train", "videos")}
        if not any(given.values()):
            continue
        unset = [f"--{v}-{k}" for k, value in given.items() if not value]
        if unset:
            parser.error(f"{v.upper()} needs {', '.join(unset)} too")
        sources.append(KineticsSource(v, args[f"{v}_classes"], given["train"], given["videos"],
                                      eval=tuple(args[f"{v}_eval"]), filename_pattern=args[f"{v}_pattern"]))
    if not sources:
        parser.error("give at least one version's --kNNN-train and --kNNN-videos")
    order = args["k710_classes"]
    if order == "mmaction2":
        order = str(packaged_classes("k710"))
    print(json.dumps(build_k710(sources, args["out"], args["video_root"], order), indent=1))


if __name__ == "__main__":
    main()
