"""Why a source gives no clips: the reasons a ``failed`` row records and stage statistics count."""

from __future__ import annotations

# A failed row's ``reason``; ``error`` holds the message. ``timeout`` and ``crashed`` are given by the
# stage runner (the worker could not say), the others by the worker from the exception it caught.
FAILURE_REASONS = (
    "missing",          # the file or URL does not exist
    "download_failed",  # fetching a remote source failed
    "no_video_stream",  # the container holds no video (audio only, subtitles, an image list)
    "undecodable",      # the container or its video data cannot be read
    "bad_timestamps",   # presentation times that do not increase, or none at all
    "timeout",          # the video used up its time budget
    "crashed",          # the worker died while holding it (a decoder segfault, the OOM killer)
    "error",            # anything else: a bug, whose message is in ``error``
)


class SourceError(Exception):
    """A source that cannot give clips, raised with the reason its failed row records."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}; expected one of {FAILURE_REASONS}")
        super().__init__(message)
        self.reason = reason
