#!/usr/bin/env python
"""``viclip-curate split-scenes`` from a clone: the same command (viclip/commands/split_scenes.py)."""

from viclip.commands.split_scenes import main

if __name__ == "__main__":
    main()
