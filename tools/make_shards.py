#!/usr/bin/env python
"""``viclip-curate make-shards`` from a clone: the same command (viclip/commands/make_shards.py)."""

from viclip.commands.make_shards import main

if __name__ == "__main__":
    main()
