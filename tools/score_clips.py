"""``viclip-curate score-clips`` from a clone: the same command (viclip/commands/score_clips.py)."""

from viclip.commands.score_clips import main

if __name__ == "__main__":
    main()
