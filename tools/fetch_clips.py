#!/usr/bin/env python
"""``viclip-curate fetch-clips`` from a clone: the same command (viclip/commands/fetch_clips.py)."""

from viclip.commands.fetch_clips import main

if __name__ == "__main__":
    main()
