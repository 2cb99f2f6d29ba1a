"""What counts as a video file, the largest frame decoded at full size, and the error an undecodable
video raises: the names the decoders, the loaders and curation share, importable without torch (so a
curation command's ``--help`` does not load it)."""

from __future__ import annotations

from viclip.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg", ".wmv", ".3gp")
# Frames above this many pixels (4K UHD, 3840x2160) are scaled down in the decoder, before RGB: a 198 KB
# H.264 of 8192x8192 frames took 8.9 GB to read at full size. read_video's max_pixels changes it.
MAX_PIXELS = 3840 * 2160


class VideoDecodeError(DataError):
    """A video that cannot be decoded; the message names the file or the shard member."""
