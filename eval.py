"""``viclip-eval`` from a clone: ``python eval.py task=zeroshot_k400 checkpoint=PATH [field=value ...]``.

The same command as the installed one (viclip/commands/eval.py).
"""

from viclip.commands.eval import main

if __name__ == "__main__":
    main()
