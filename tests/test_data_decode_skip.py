"""The PyAV reader skips non-reference pictures and stops at the last sampled frame, yet gives the
frames of a full decode bit for bit, on sources with B-frames, B-pyramids, open GOPs and none."""

import io

import av
import numpy as np
import pytest

from viclip.data import video
from viclip.data.video import _pyav_decode, sample_indices
from viclip.testing.corpus import encode, scene_frames

FPS, N, W, H = 8, 48, 128, 72
# x264 options on top of corpus.encode's (crf 18, veryfast); every source has a keyframe every 12 frames
SOURCES = {
    "x264_default_bframes": {"preset": "medium", "g": "12"},  # x264's defaults: 3 B-frames, pyramid normal
    "b_pyramid_deep": {"g": "12", "x264-params": "bframes=7:b-pyramid=normal:b-adapt=2"},
    "open_gop": {"g": "12", "x264-params": "bframes=3:open-gop=1:b-adapt=0"},
    "no_bframes": {"g": "12", "x264-params": "bframes=0"},
    "interlaced_slices": {"g": "12", "x264-params": "interlaced=1:bframes=3:slices=4"},  # MBAFF, 4 slices a frame
}
SAMPLINGS = [("random", seed) for seed in range(6)] + [("middle", None)]


def _source(options: dict[str, str], fmt: str = "mp4", codec: str = "libx264") -> bytes:
    buf = io.BytesIO()
    encode(buf, iter([scene_frames(0, 0, N, W, H)]), FPS, codec=codec, options=options, fmt=fmt)
    return buf.getvalue()


def _full_decode(data: bytes, size: tuple[int, int] | None) -> tuple[list[np.ndarray], list[int]]:
    """Every frame in display order through a plain decode (nothing skipped), and each one's picture type."""
    fmt = {"format": "rgb24"} if size is None else {
        "format": "rgb24", "height": size[0], "width": size[1], "interpolation": "BICUBIC"}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        decoded = sorted((f.pts, f.reformat(**fmt).to_ndarray(), int(f.pict_type)) for f in container.decode(stream))
    return [f for _, f, _ in decoded], [t for _, _, t in decoded]


def _check_exact(data: bytes, size: tuple[int, int] | None = None) -> list[int]:
    """Assert every sampling gives the full decode's frames; return the pictures decoded per sampling."""
    frames, _ = _full_decode(data, size)
    assert len(frames) == N
    counts = []
    for sampling, seed in SAMPLINGS:
        out, decoded = _pyav_decode(io.BytesIO(data), 8, sampling, size, seed)
        idx = sample_indices(N, 8, sampling, seed)
        bad = [i for j, i in enumerate(idx) if not np.array_equal(out[j], frames[i])]
        assert not bad, f"{sampling} seed {seed}: frames {bad} differ from the full decode"
        counts.append(decoded)
    return counts


@pytest.mark.parametrize("name", SOURCES)
def test_sampled_frames_equal_a_full_decode_bit_for_bit(name, monkeypatch):
    data = _source(SOURCES[name])
    _, types = _full_decode(data, None)
    has_b = int(av.video.frame.PictureType.B) in types
    assert has_b == (name != "no_bframes"), f"{name}: picture types {types}"
    with_skip = _check_exact(data)
    _check_exact(data, size=(36, 64))  # resized in the decoder's swscale, as the loader asks
    monkeypatch.setattr(video, "_SKIP_UNSAMPLED", "DEFAULT")  # the same runs, nothing skipped
    without_skip = _check_exact(data)
    if has_b:  # the non-reference B-frames between sampled frames were never decoded
        assert sum(with_skip) < sum(without_skip), (with_skip, without_skip)
    else:
        assert with_skip == without_skip
    assert max(without_skip) < N  # decoding stops after the last sampled frame of each run


def test_skipping_a_referenced_picture_is_caught():
    """The comparison is sharp enough: skipping every B-frame (BIDIR) drops the B-pyramid's referenced
    B-frames too, and frames decoded after them come out different from the full decode."""
    data = _source(SOURCES["b_pyramid_deep"])
    _check_exact(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video, "_SKIP_UNSAMPLED", "BIDIR")
        with pytest.raises(AssertionError, match="differ from the full decode"):
            _check_exact(data)


def _packets(data: bytes) -> list:
    with av.open(io.BytesIO(data)) as container:
        return [p for p in container.demux(container.streams.video[0]) if p.pts is not None]


def _decode_alone(data: bytes, pts: int) -> np.ndarray | None:
    """The frame at ``pts`` decoded by the reader's runs alone (no fallback), or None if they miss it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        packets = [p for p in container.demux(stream) if p.pts is not None]
        frames: dict[int, np.ndarray] = {}
        for start, stop in video._decode_runs(packets, {pts}):
            video._decode_pts(stream.codec_context, packets[start:stop], {pts}, {"format": "rgb24"}, frames,
                              video._SKIP_UNSAMPLED)
    return frames.get(pts)


def test_open_gop_leading_frames_decode_from_the_previous_group():
    """A frame shown before the keyframe that precedes it in decode order (an open GOP's leading
    picture) references the previous group: its run starts there, and each frame sampled alone,
    leading or not, comes out of the runs exactly as from the full decode."""
    data = _source(SOURCES["open_gop"])
    frames, _ = _full_decode(data, None)
    packets = _packets(data)
    display = sorted(p.pts for p in packets)
    leading, key_pts = [], None
    for p in packets:
        key_pts = p.pts if p.is_keyframe else key_pts
        if key_pts is not None and p.pts < key_pts:
            leading.append(display.index(p.pts))
    assert leading, "the open-GOP source has no leading pictures"
    for i in range(N):
        assert np.array_equal(_decode_alone(data, display[i]), frames[i]), f"frame {i} (leading: {i in leading})"


def test_mpegts_matroska_and_hevc_sources_are_exact():
    """MPEG-TS marks keyframes from its parser, not a sample table; HEVC decodes every packet of a run."""
    _check_exact(_source(SOURCES["x264_default_bframes"], fmt="mpegts"))
    _check_exact(_source(SOURCES["open_gop"], fmt="matroska"))
    _check_exact(_source({"x265-params": "log-level=error"}, codec="libx265"))
