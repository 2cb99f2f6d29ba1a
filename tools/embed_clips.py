#!/usr/bin/env python
"""``viclip-curate embed-clips`` from a clone: the same command (viclip/commands/embed_clips.py)."""

from viclip.commands.embed_clips import main

if __name__ == "__main__":
    main()
