"""Clip extraction: exact frames by time, frame-rate reduction, size, keyframe spacing, x264 tune,
stream copy, audio."""

import io
from fractions import Fraction
from itertools import pairwise

import av
import numpy as np
import pytest

from viclip.curation.extract import ExtractConfig, extract_clips, output_size
from viclip.curation.filters import FilterConfig
from viclip.curation.scenes import SceneConfig
from viclip.curation.splitter import split_one_pass, split_two_pass
from viclip.data.video import read_video
from viclip.testing import corpus
from viclip.testing import videos as tv

FPS = 25


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """10 s of frames that carry their own index, keyframe every second."""
    path = tmp_path_factory.mktemp("extract") / "indexed.mp4"
    tv.write_video(path, tv.index_frames(10 * FPS, 192, 96), FPS, gop=FPS)
    return path


def decode(mp4: bytes, read=tv.read_index) -> tuple[list[int], list[float], list[bool], tuple[int, int]]:
    with av.open(io.BytesIO(mp4)) as c:
        frames = list(c.decode(video=0))
        return ([read(f.to_ndarray(format="rgb24")) for f in frames], [float(f.time) for f in frames],
                [f.key_frame for f in frames], (frames[0].width, frames[0].height))


def test_reencode_spans_hold_exactly_the_frames_in_them(indexed):
    spans = [(1.0, 2.5), (0.5, 1.2), (8.5, 30.0), (3.01, 3.02), (40.0, 41.0)]  # unsorted, overlapping, empty
    clips = extract_clips(indexed, spans, ExtractConfig(short_side=48, fps=0))
    idx, times, _, size = decode(clips[0].mp4)
    assert idx == list(range(25, 63)) and times[0] == 0.0 and size == (96, 48)
    assert (clips[0].start, clips[0].end, clips[0].frames) == (1.0, 2.52, 38)
    assert decode(clips[1].mp4)[0] == list(range(13, 30))  # 0.5 s falls between frames 12 and 13
    assert decode(clips[2].mp4)[0] == list(range(213, 250)) and clips[2].end == pytest.approx(10.0)
    assert clips[3] is None and clips[4] is None


def test_training_default_keeps_one_frame_per_quarter_second_all_keyframes(indexed):
    default = ExtractConfig()
    assert (default.short_side, default.fps, default.keyframe_interval, default.tune) == (256, 4.0, 0.0, "fastdecode")
    clip = extract_clips(indexed, [(1.0, 2.5)], ExtractConfig(short_side=48))[0]
    idx, times, keys, _ = decode(clip.mp4)
    # slots at 1.0, 1.25, ... s take the first source frame at or after them (25 fps: 1.28 s is frame 32)
    assert idx == [25, 32, 38, 44, 50, 57] and clip.frames == 6 and all(keys)
    assert times == pytest.approx([0.0, 0.28, 0.52, 0.76, 1.0, 1.28])  # source timestamps are kept
    assert (clip.start, clip.end) == (1.0, 2.52)  # the clip still covers its whole span
    assert b"cabac=0" in clip.mp4 and b"deblock=0" in clip.mp4  # x264's settings SEI: fastdecode
    faster = extract_clips(indexed, [(1.0, 2.5)], ExtractConfig(short_side=48, fps=60, tune=""))[0]
    assert decode(faster.mp4)[0] == list(range(25, 63))  # a rate above the source's keeps every frame
    assert b"cabac=1" in faster.mp4
    with pytest.raises(ValueError, match="fps"):
        ExtractConfig(fps=-1)


def test_keyframe_interval_allows_cheap_8_frame_sampling(indexed):
    clip = extract_clips(indexed, [(0.0, 8.0)], ExtractConfig(short_side=48, fps=0, keyframe_interval=1.0))[0]
    keys = np.flatnonzero(decode(clip.mp4)[2])
    assert keys[0] == 0 and np.diff(keys).max() <= FPS  # at most one second to decode after a seek
    short = extract_clips(indexed, [(0.0, 2.0)], ExtractConfig(short_side=48, fps=0, keyframe_interval=1.0))[0]
    assert np.diff(np.flatnonzero(decode(short.mp4)[2])).max() <= 2 * FPS // 8  # 8 keyframes in a 2 s clip


def test_clip_frame_types_are_x264s_not_the_sources(tmp_path):
    """The scaler copies each decoded frame's picture type; passed on, libx264 forced the source's GOPs."""
    path = tmp_path / "gop10.mp4"
    tv.write_video(path, tv.index_frames(8 * FPS, 192, 96), FPS, gop=10)
    source_keys = np.flatnonzero(decode(path.read_bytes())[2])
    clip = extract_clips(path, [(0.0, 8.0)], ExtractConfig(short_side=48, fps=0, keyframe_interval=1.0))[0]
    keys = np.flatnonzero(decode(clip.mp4)[2])
    assert np.diff(source_keys).max() <= 10 and len(keys) < len(source_keys) and np.diff(keys).max() <= FPS


def test_never_upscales_and_keeps_even_sizes():
    assert output_size(1280, 720, 256) == (456, 256)
    assert output_size(720, 1280, 256) == (256, 456)
    assert output_size(320, 180, 256) == (320, 180)
    assert all(abs(a - b) <= 1 and a % 2 == 0 for a, b in zip(output_size(101, 51, 256), (101, 51)))


def test_stream_copy_takes_whole_gops_inside_the_span(indexed):
    source_keys = np.flatnonzero(decode(indexed.read_bytes())[2])  # x264 adds keyframes of its own
    first = source_keys[source_keys >= 1.5 * FPS][0]
    stop = source_keys[source_keys <= 6.2 * FPS][-1]
    clip = extract_clips(indexed, [(1.5, 6.2)], ExtractConfig(copy=True))[0]
    idx, _, keys, size = decode(clip.mp4)
    assert idx == list(range(first, stop)) and keys[0] and size == (192, 96)
    assert (clip.start, clip.end, clip.frames) == (first / FPS, stop / FPS, stop - first)
    gap = next(k for k in pairwise(source_keys) if k[1] - k[0] > 2)  # a span inside one GOP
    assert extract_clips(indexed, [((gap[0] + 1) / FPS, (gap[1] - 1) / FPS)], ExtractConfig(copy=True)) == [None]


def test_audio_is_kept_when_asked(tmp_path):
    path = tmp_path / "av.mp4"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=16000)
        with av.open("sine=frequency=440:sample_rate=16000:duration=3", format="lavfi") as sine:
            for frame in sine.decode(audio=0):
                for p in a.encode(frame):
                    out.mux(p)
        for p in a.encode():
            out.mux(p)
        for i, frame in enumerate(tv.pan_frames(3 * FPS, 64, 48, 1.0)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            for p in v.encode(vf):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    with_audio = extract_clips(path, [(0.5, 2.0)], ExtractConfig(audio=True))[0]
    without = extract_clips(path, [(0.5, 2.0)], ExtractConfig())[0]
    with av.open(io.BytesIO(with_audio.mp4)) as c:
        assert len(c.streams.audio) == 1
        audio_seconds = sum(f.samples for f in c.decode(audio=0)) / 16000
        assert audio_seconds == pytest.approx(1.5, abs=0.1)
    with av.open(io.BytesIO(without.mp4)) as c:
        assert len(c.streams.audio) == 0
    with pytest.raises(ValueError, match="audio"):
        ExtractConfig(copy=True, audio=True)


def _long_gop_source(path, scene_seconds: float, scenes: int, still: set[int], key_seconds: float) -> None:
    """Tinted, index-stamped scenes with keyframes ``key_seconds`` apart (none at the cuts)."""
    n = round(scene_seconds * FPS)

    def frames():
        for k in range(scenes):
            scene = corpus.scene_frames(k, k * n, n, 192, 96)
            if k in still:
                scene[:] = scene[0]
            yield scene

    corpus.encode(path, frames(), FPS, options=corpus.long_gop_options(key_seconds, FPS))


def test_cuts_between_far_apart_keyframes_are_extracted_going_forward(tmp_path):
    """Keyframes every 10 s, cuts every 3 s: the seek-based extractor went back to the keyframe before
    the next clip, found it still far away, and seeked there again forever."""
    path = tmp_path / "long_gop.mp4"
    _long_gop_source(path, 3.0, 6, still=set(), key_seconds=10.0)
    _, _, keys, _ = decode(path.read_bytes())
    assert np.flatnonzero(keys).tolist() == [0, 250]
    spans = [(0.0, 3.0), (9.0, 12.0), (12.0, 15.0)]  # 3-9 s skipped: the next clip lies inside the first GOP
    clips = extract_clips(path, spans, ExtractConfig(short_side=96, fps=0))
    for (start, end), clip in zip(spans, clips):
        assert decode(clip.mp4, corpus.read_stamp)[0] == list(range(round(start * FPS), round(end * FPS)))
        assert (clip.start, clip.end) == pytest.approx((start, end))


@pytest.mark.parametrize("split", [split_one_pass, split_two_pass])
def test_long_gop_source_with_a_dropped_scene_between_kept_ones(tmp_path, split):
    """Scene-split a source with one keyframe per 10 s and cuts every 3 s, the middle scene still:
    every kept clip decodes (``read_video``) to the source frames of its span."""
    path = tmp_path / "long_gop.mp4"
    _long_gop_source(path, 3.0, 5, still={2}, key_seconds=10.0)
    result = split(path, SceneConfig(), FilterConfig(), ExtractConfig(short_side=96, fps=0))
    assert [c.reason for c in result.candidates] == ["", "", "still", "", ""]
    for c, clip in zip(result.candidates, result.clips):
        if c.reason:
            assert clip is None
            continue
        frames = read_video(clip.mp4, num_frames=clip.frames).numpy()
        assert [corpus.read_stamp(f) for f in frames] == list(range(c.first, c.stop))
