"""``viclip-curate build-subset`` from a clone: the same command (viclip/commands/build_subset.py)."""

from viclip.commands.build_subset import main

if __name__ == "__main__":
    main()
