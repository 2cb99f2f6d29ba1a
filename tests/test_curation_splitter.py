"""One decode pass (split_one_pass) against the two-pass path (scan_video, then extract_clips): the same
cuts, the same kept/dropped decisions, the same clips; memory bounded by min_scene_len, not the source."""

import io

import av
import numpy as np
import pytest

from viclip.curation import splitter
from viclip.curation.extract import ExtractConfig
from viclip.curation.filters import FilterConfig
from viclip.curation.scenes import SceneConfig
from viclip.curation.splitter import split_one_pass, split_two_pass
from viclip.testing import corpus
from viclip.testing import videos as tv

W, H, FPS = 160, 96, 25


def stamped(frames: np.ndarray, first: int) -> np.ndarray:
    return corpus.stamp_index(frames.copy(), first)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Scenes the filters keep and drop: pan, photo (still), pan, noise (dynamic), 0.6 s pan (too short),
    test pattern; index-stamped so clip frames can be traced back to the source."""
    parts = [tv.pan_frames(60, W, H, 0.3, seed=1), tv.slideshow_frames(50, W, H, hold=50, seed=2),
             tv.pan_frames(45, W, H, 0.5, seed=3), tv.noise_frames(40, W, H), tv.pan_frames(15, W, H, 0.4, seed=4),
             tv.lavfi_frames("testsrc2", 2.4, W, H, FPS)]
    frames, first = [], 0
    for k, part in enumerate(parts):
        frames.append(part if k in (1, 3) else stamped(part, first))  # a still scene must stay still
        first += len(part)
    path = tmp_path_factory.mktemp("splitter") / "mixed.mp4"
    tv.write_video(path, np.concatenate(frames), FPS, gop=FPS)
    return path


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.02, 0.07, size=120))
    frames = np.concatenate([stamped(tv.pan_frames(60, W, H, 0.3, seed=5), 0),
                             stamped(tv.lavfi_frames("testsrc2", 60 / FPS, W, H, FPS)[:60], 60)])
    path = tmp_path_factory.mktemp("splitter") / "vfr.mp4"
    tv.write_vfr_video(path, frames, times)
    return path


def decode(mp4: bytes) -> tuple[np.ndarray, list[float]]:
    with av.open(io.BytesIO(mp4)) as c:
        frames = list(c.decode(video=0))
        return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [float(f.time) for f in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


DEBLOCKED = SceneConfig(skip_deblock=False)  # both paths then decode the same pixels: clips must be identical
CONFIGS = {
    "defaults": (SceneConfig(), FilterConfig(), ExtractConfig(short_side=64)),
    "deblocked": (DEBLOCKED, FilterConfig(), ExtractConfig(short_side=64)),
    "source rate": (DEBLOCKED, FilterConfig(), ExtractConfig(short_side=64, fps=0)),
    "keyframe interval": (DEBLOCKED, FilterConfig(), ExtractConfig(short_side=64, fps=0, keyframe_interval=0.5)),
    "split long scenes": (DEBLOCKED, FilterConfig(max_clip=2.0, long_clips="split"), ExtractConfig(short_side=64)),
    "drop long scenes": (DEBLOCKED, FilterConfig(max_clip=2.0), ExtractConfig(short_side=64)),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("source", ["mixed", "vfr"])
def test_one_pass_equals_two_passes(name, source, request):
    path = request.getfixturevalue(source)
    one, two = split_one_pass(path, *CONFIGS[name]), split_two_pass(path, *CONFIGS[name])
    assert one.scan.cuts == two.scan.cuts and len(one.scan.cuts) >= 1
    np.testing.assert_array_equal(one.scan.times, two.scan.times)
    assert one.candidates == two.candidates  # spans, motion statistics and reasons
    reasons = {c.reason for c in one.candidates}
    if source == "mixed" and name in ("defaults", "deblocked", "source rate"):
        assert reasons == {"", "still", "dynamic", "too_short"}
    assert [c is None for c in one.clips] == [c is None for c in two.clips]
    if name == "drop long scenes":
        assert "too_long" in reasons
    else:
        assert sum(c is not None for c in one.clips) >= 2
    for c, a, b in zip(one.candidates, one.clips, two.clips):
        if a is None:
            continue
        assert (a.start, a.end, a.frames, a.width, a.height) == (b.start, b.end, b.frames, b.width, b.height)
        if name != "defaults":
            assert a.mp4 == b.mp4
            continue
        # by default the one pass decodes without the loop filter (as the scan does), the extractor with it
        (fa, ta), (fb, tb) = decode(a.mp4), decode(b.mp4)
        assert ta == tb and fa.shape == fb.shape and psnr(fa, fb) > 30


def test_one_pass_clips_hold_the_source_frames_of_their_span(mixed):
    split = split_one_pass(mixed, SceneConfig(), FilterConfig(), ExtractConfig(short_side=96, fps=0))
    kept = [(c, clip) for c, clip in zip(split.candidates, split.clips) if clip is not None]
    assert [c.first for c, _ in kept] == [0, 110, 210]
    for c, clip in kept:
        frames, _ = decode(clip.mp4)
        scale = frames[:, :, :].shape[2] / W
        assert scale == pytest.approx(1.0)  # 160x96 is under the short side: never upscaled
        if c.first != 210:  # the test pattern carries no index
            assert [corpus.read_stamp(f) for f in frames] == list(range(c.first, c.stop))


def test_memory_is_bounded_by_min_scene_len_not_by_the_source(mixed, monkeypatch):
    """Held frames never exceed min_scene_len (+ margin) of video; a scene past max_clip is not encoded."""
    held, encoded = [], []
    add, release = splitter._SceneEncoder.add, splitter._SceneEncoder._release

    def spy_add(self, frame, cuts):
        add(self, frame, cuts)
        held.append(len(self.queue))

    def spy_release(self, i, frame):
        release(self, i, frame)
        encoded.append(self.encoder.frames if self.encoder is not None else 0)

    monkeypatch.setattr(splitter._SceneEncoder, "add", spy_add)
    monkeypatch.setattr(splitter._SceneEncoder, "_release", spy_release)
    scenes = SceneConfig(min_scene_len=0.5)
    split = split_one_pass(mixed, scenes, FilterConfig(max_clip=1.9), ExtractConfig(short_side=64, fps=0))
    assert max(held) <= round((scenes.min_scene_len + splitter.HOLD_MARGIN) * FPS) + 1
    assert max(encoded) <= 1.9 * FPS + 1  # the 2.4 s scenes left memory at 1.9 s
    assert sum(c is not None for c in split.clips) == 1  # only the 1.8 s pan is short enough


def test_one_pass_refuses_copy_and_audio(mixed):
    with pytest.raises(ValueError, match="split_two_pass"):
        split_one_pass(mixed, SceneConfig(), FilterConfig(), ExtractConfig(copy=True))
