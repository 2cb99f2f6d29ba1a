#!/usr/bin/env python
"""``viclip-curate export-subset`` from a clone: the same command (viclip/commands/export_subset.py)."""

from viclip.commands.export_subset import main

if __name__ == "__main__":
    main()
