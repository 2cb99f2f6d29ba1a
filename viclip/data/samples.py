"""What a tar sample must hold to be trained on, checked where the stream reads it.

A sample that fails raises :class:`SkipSample` with its reason; the stream counts and logs it and
reads on, so one bad clip of millions costs that clip, not the run.
"""

from __future__ import annotations

import json

from viclip.model.tokenizer import clean_caption

SKIP_REASONS = ("corrupt_shard", "oversized_member", "missing_video", "missing_caption", "short_caption", "bad_json",
                "undecodable")


class SkipSample(Exception):
    """A sample the stream cannot train on: ``reason`` is one of :data:`SKIP_REASONS`, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def sample_fields(sample: dict, min_caption_words: int) -> tuple[str, dict, bytes]:
    """``(caption, json metadata, mp4 bytes)`` of a sample from :func:`viclip.data.tars.iter_tar_samples`.

    The caption is the ``.txt`` member, else the json's ``caption``; it needs ``min_caption_words``
    words after the official cleaning (the official loader drops shorter captions: 2). The json, when
    present, must be an object.
    """
    if "__oversized__" in sample:
        raise SkipSample("oversized_member", sample["__oversized__"])
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SkipSample("bad_json", str(e)) from None
        if not isinstance(meta, dict):
            raise SkipSample("bad_json", f"a JSON {type(meta).__name__}, not an object")
    caption = sample["txt"].decode("utf-8", "replace") if "txt" in sample else meta.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SkipSample("missing_caption")
    words = len(clean_caption(caption).split())
    if words < min_caption_words:
        raise SkipSample("short_caption", f"{words} word(s) after cleaning, min_caption_words={min_caption_words}: "
                                          f"{caption.strip()[:80]!r}")
    video = sample.get("mp4")
    if video is None:
        raise SkipSample("missing_video")
    return caption.strip(), meta, video
