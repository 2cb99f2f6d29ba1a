"""``viclip-train`` from a clone: ``python train.py experiment=<paper run | demo | ft_*> [field=value ...]``.

The same command as the installed one (viclip/commands/train.py); with torchrun:
``torchrun --standalone --nproc_per_node=N train.py ...``.
"""

from viclip.commands.train import main

if __name__ == "__main__":
    main()
