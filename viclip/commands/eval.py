"""Evaluate a ViCLIP checkpoint by the paper's protocol: ``viclip-eval task=zeroshot_k400 checkpoint=PATH``.

From a clone ``python eval.py ...`` is the same command. Tasks live in configs/task/ (a folder of
your own joins with ``--config-dir DIR``); ``-m task=a,b,c`` prints one combined table; torchrun
splits the videos over ranks. All logic is in :mod:`viclip.eval.runner`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from viclip.commands import hydra_command, one_line_errors


@one_line_errors
def eval_task(cfg: DictConfig) -> None:
    """One task of the composed config: results JSON and the paper's table."""
    from viclip.eval.runner import evaluate

    evaluate(cfg)


main = hydra_command(eval_task, "eval")

if __name__ == "__main__":
    main()
