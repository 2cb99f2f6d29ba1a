"""``viclip-curate make-icl`` from a clone: the same command (viclip/commands/make_icl.py)."""

from viclip.commands.make_icl import main

if __name__ == "__main__":
    main()
