#!/usr/bin/env python
"""``viclip-curate plot-stats`` from a clone: the same command (viclip/commands/plot_stats.py)."""

from viclip.commands.plot_stats import main

if __name__ == "__main__":
    main()
