"""Train ViCLIP: ``python train.py experiment=<paper run | demo | ft_*> [field=value ...]`` (configs/train.yaml).

``trainer`` picks the Trainer (pretrain, or the fine-tuning ones of viclip.finetune: retrieval, recognition).

Launch with torchrun (``torchrun --standalone --nproc_per_node=N train.py ...``), srun
(slurm/train_l14.sh) or as one process; ``-m sweep=<name>`` runs the ablation sweeps. A config with
``final_eval`` (the demo) then evaluates the last exported weights with eval.py's config and runner.
"""

import hydra
from hydra import compose
from omegaconf import DictConfig


@hydra.main(config_path="viclip/configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from viclip.train import train, trainer_class

    result = train(cfg, trainer_class(cfg.trainer))
    if cfg.final_eval is not None and result.is_main:
        from viclip.eval.runner import evaluate

        weights = list(result.exports.values())[-1]
        evaluate(compose(config_name="eval", overrides=[
            f"checkpoint={weights}", f"output_dir={result.run_dir / 'eval'}", *cfg.final_eval.overrides]))


if __name__ == "__main__":
    main()
