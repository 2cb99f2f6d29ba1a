#!/usr/bin/env python
"""``viclip-curate collect-sources`` from a clone: the same command (viclip/commands/collect_sources.py)."""

from viclip.commands.collect_sources import main

if __name__ == "__main__":
    main()
