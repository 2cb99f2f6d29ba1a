"""``viclip-curate caption-clips`` from a clone: the same command (viclip/commands/caption_clips.py)."""

from viclip.commands.caption_clips import main

if __name__ == "__main__":
    main()
