"""Evaluate a ViCLIP checkpoint by the paper's protocol: ``python eval.py task=zeroshot_k400 checkpoint=PATH``.

Tasks live in configs/task/; ``-m task=a,b,c`` prints one combined table; torchrun splits the videos
over ranks. All logic is in :mod:`viclip.eval.runner`.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="viclip/configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from viclip.eval.runner import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
