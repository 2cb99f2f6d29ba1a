"""``python tools/make_k710.py`` from a clone: the Kinetics-710 lists (viclip/commands/make_k710.py)."""

from viclip.commands.make_k710 import main

if __name__ == "__main__":
    main()
