"""Write the synthetic demo data: training shards, a zero-shot set and a retrieval set.

    python tools/make_synthetic.py data/synthetic --n-train 2000 --n-eval 200 --size 64
"""

import argparse

from viclip.data.synthetic import make_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="data/synthetic")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--shard-size", type=int, default=500, help="clips per training tar")
    parser.add_argument("--two-object-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_synthetic(args.out_dir, n_train=args.n_train, n_eval=args.n_eval, size=args.size,
                           num_frames=args.num_frames, seed=args.seed, fps=args.fps,
                           shard_size=args.shard_size, two_object_fraction=args.two_object_fraction)
    for field, value in vars(paths).items():
        print(f"{field:22s} {value}")


if __name__ == "__main__":
    main()
