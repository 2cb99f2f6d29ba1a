#!/usr/bin/env python
"""``viclip-curate dedup-clips`` from a clone: the same command (viclip/commands/dedup_clips.py)."""

from viclip.commands.dedup_clips import main

if __name__ == "__main__":
    main()
