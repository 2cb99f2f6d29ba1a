#!/usr/bin/env python
"""``viclip-curate plan`` from a clone: the same command (viclip/commands/plan.py)."""

from viclip.commands.plan import main

if __name__ == "__main__":
    main()
