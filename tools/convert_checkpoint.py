"""``viclip-convert`` from a clone: the same command (viclip/commands/convert.py)."""

from viclip.commands.convert import main

if __name__ == "__main__":
    main()
