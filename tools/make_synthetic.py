"""``viclip-curate make-synthetic`` from a clone: the same command (viclip/commands/make_synthetic.py)."""

from viclip.commands.make_synthetic import main

if __name__ == "__main__":
    main()
