"""Train ViCLIP: ``viclip-train experiment=<paper run | demo | ft_*> [field=value ...]`` (configs/train.yaml).

From a clone ``python train.py ...`` is the same command. ``trainer`` picks the Trainer (pretrain, or
the fine-tuning ones of viclip.finetune: retrieval, recognition). Launch with torchrun
(``torchrun --standalone --nproc_per_node=N --no-python viclip-train ...``), srun (slurm/train_l14.sh)
or as one process; ``-m sweep=<name>`` runs the ablation sweeps; ``dry_run=N`` prints each phase's
steps at N ranks and exits. A config with ``final_eval`` (the
demo) then evaluates the last exported weights with the eval config and runner, on every rank of the
run while its process group still stands (the runner splits the videos over them).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from viclip.commands import hydra_command, one_line_errors

if TYPE_CHECKING:
    from viclip.train import TrainResult


@one_line_errors
def train_task(cfg: DictConfig) -> None:
    """Both phases of the composed config, then its ``final_eval`` if any."""
    from hydra import compose

    from viclip.train import train, trainer_class
    from viclip.train.config import plan

    if cfg.dry_run is not None:
        print("\n".join(plan(cfg, int(cfg.dry_run))))
        return

    def final_eval(result: TrainResult) -> None:
        from viclip.eval.runner import evaluate

        weights = list(result.exports.values())[-1]
        evaluate(compose(config_name="eval", overrides=[
            f"checkpoint={weights}", f"output_dir={result.run_dir / 'eval'}", *cfg.final_eval.overrides]))

    result = train(cfg, trainer_class(cfg.trainer), then=final_eval if cfg.final_eval is not None else None)
    if int(os.environ.get("RANK", "0")) == 0 and result.exports:
        print(summary(result))


def summary(result: TrainResult) -> str:
    """The run's last line: where its weights are and how to evaluate them."""
    loss = "" if result.final_loss is None else f", last loss {result.final_loss:.4f}"
    weights = list(result.exports.values())
    return (f"done: {result.run_dir}{loss}; weights {', '.join(map(str, weights))}; evaluate with "
            f"viclip-eval task=TASK checkpoint={weights[-1]}")


main = hydra_command(train_task, "train")

if __name__ == "__main__":
    main()
