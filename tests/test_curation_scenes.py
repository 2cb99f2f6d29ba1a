"""Scene cuts, VFR timing, length bounds and the motion filters on generated videos."""

import numpy as np
import pytest
import scenedetect
from scenedetect.detectors import ContentDetector

from viclip.curation.clips import CurationConfig, split_video
from viclip.curation.filters import FilterConfig, candidate_clips, split_scene
from viclip.curation.scenes import SceneConfig, VideoScan, scan_video
from viclip.curation.sources import Source
from viclip.testing import videos as tv

W, H, FPS = 128, 72, 25


@pytest.fixture(scope="module")
def multi_scene(tmp_path_factory):
    """Different lavfi sources and a pan joined back to back: the true cuts are the joins."""
    segments = [tv.lavfi_frames("testsrc2", 1.6, W, H, FPS), tv.lavfi_frames("mandelbrot", 2.0, W, H, FPS),
                tv.pan_frames(37, W, H, speed=2.0), tv.lavfi_frames("smptebars", 1.2, W, H, FPS),
                tv.lavfi_frames("testsrc2", 1.0, W, H, FPS)]
    path = tmp_path_factory.mktemp("scenes") / "multi.mp4"
    tv.write_video(path, np.concatenate(segments), FPS)
    return path, np.cumsum([len(s) for s in segments])[:-1]


def test_cuts_at_the_joins_within_one_frame(multi_scene):
    path, joins = multi_scene
    scan = scan_video(path)
    assert len(scan.cuts) == len(joins)
    assert np.abs(np.asarray(scan.cuts) - joins).max() <= 1
    np.testing.assert_allclose(scan.times[scan.cuts], joins / FPS, atol=1.01 / FPS)
    # scenes tile the video: each ends where the next starts, the last at the end of the last frame
    spans = [scan.span_time(a, b) for a, b in scan.scenes()]
    assert spans[0][0] == 0.0 and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert spans[-1][1] == pytest.approx(scan.num_frames / FPS)


def test_same_cuts_as_pyscenedetect_defaults(multi_scene):
    path, _ = multi_scene
    theirs = [s[0].frame_num for s in scenedetect.detect(str(path), ContentDetector(threshold=27.0))[1:]]
    assert scan_video(path).cuts == theirs


def test_cut_free_video_is_one_scene(tmp_path):
    path = tmp_path / "one.mp4"
    tv.write_video(path, tv.pan_frames(30, W, H, speed=1.5), FPS)
    scan = scan_video(path)
    assert scan.cuts == [] and scan.scenes() == [(0, 30)]
    assert scan.span_time(0, 30) == (0.0, pytest.approx(30 / FPS))


def test_variable_frame_rate_cut_at_its_presentation_time(tmp_path):
    # irregular gaps: 100 ms then two of 20 ms, repeated; the new scene starts at frame 30 = 1.40 s
    gaps = np.where(np.arange(59) % 3 == 0, 0.10, 0.02)
    times = np.r_[0.0, np.cumsum(gaps)]
    frames = np.concatenate([tv.lavfi_frames("testsrc2", 1.2, W, H, FPS)[:30], tv.pan_frames(30, W, H, 2.0)])
    path = tmp_path / "vfr.mp4"
    tv.write_vfr_video(path, frames, times)
    scan = scan_video(path)
    np.testing.assert_allclose(scan.times, times, atol=1e-9)
    assert scan.cuts == [30]
    assert scan.span_time(0, 30) == (0.0, pytest.approx(1.40))  # a frame-count clock would say 30/avg_fps


def test_min_scene_len_merges_bursts_of_cuts(tmp_path):
    frames = np.concatenate([tv.pan_frames(25, W, H, 1.0), tv.strobe_frames(25, W, H, period=2),
                             tv.pan_frames(25, W, H, 1.0, seed=4)])
    path = tmp_path / "strobe.mp4"
    tv.write_video(path, frames, FPS)
    # every strobe frame is a cut candidate; within min_scene_len they merge into a single scene
    assert len(scan_video(path, SceneConfig(min_scene_len=0.5)).cuts) <= 3
    assert len(scan_video(path, SceneConfig(min_scene_len=0.0)).cuts) > 10


def _fake_scan(n: int, fps: float, cuts: list[int], diffs: np.ndarray | None = None) -> VideoScan:
    diffs = np.full(n, 5.0, np.float32) if diffs is None else diffs
    return VideoScan(times=np.arange(n) / fps, diffs=diffs, cuts=cuts, end=n / fps, width=W, height=H)


def test_length_bounds_drop_short_and_long_or_split_long():
    scan = _fake_scan(10 * 200, 10.0, cuts=[5, 5 + 600])  # scenes of 0.5 s, 60 s, 139.5 s
    dropped = candidate_clips(scan, FilterConfig(min_clip=1.0, max_clip=120.0))
    assert [c.reason for c in dropped] == ["too_short", "", "too_long"]
    split = candidate_clips(scan, FilterConfig(min_clip=1.0, max_clip=50.0, long_clips="split"))
    assert [c.reason for c in split] == ["too_short"] + [""] * 5  # 60 s -> 2 x 30 s, 139.5 s -> 3 x 46.5 s
    assert [round(c.duration, 1) for c in split[1:]] == [30.0, 30.0, 46.5, 46.5, 46.5]
    assert split_scene(scan.times[:5], scan.span_time(0, 5)[1], 50.0) == [(0, 5)]


def test_motion_filter_reasons_on_synthetic_thresholds():
    quiet = np.zeros(100, np.float32)
    flicker = np.where(np.arange(100) % 10 == 0, 200.0, 1.0).astype(np.float32)
    cfg = FilterConfig()
    assert candidate_clips(_fake_scan(100, 25.0, [], quiet), cfg)[0].reason == "still"
    assert candidate_clips(_fake_scan(100, 25.0, [], flicker), cfg)[0].reason == "dynamic"  # spread, not mean
    assert candidate_clips(_fake_scan(100, 25.0, []), cfg)[0].reason == ""


def test_still_noise_and_strobe_segments_dropped_with_reasons(tmp_path):
    segments = [tv.lavfi_frames("testsrc2", 2.0, W, H, FPS),           # moving parts: kept
                tv.lavfi_frames("smptebars", 2.0, W, H, FPS),          # test card: still
                tv.noise_frames(50, W, H),                             # TV static: dynamic
                tv.pan_frames(50, W, H, 0.5),                          # slow pan: kept
                tv.strobe_frames(50, W, H, period=3),                  # strobing: dynamic
                tv.slideshow_frames(50, W, H, hold=50, seed=5)]        # one photo: still
    path = tmp_path / "mixed.mp4"
    tv.write_video(path, np.concatenate(segments), FPS)
    result = split_video(Source("mixed", str(path)), str(path), CurationConfig())
    got = [(round(r["start"], 2), r["status"], r["reason"]) for r in result.rows]
    assert got == [(0.0, "kept", ""), (2.0, "dropped", "still"), (4.0, "dropped", "dynamic"), (6.0, "kept", ""),
                   (8.0, "dropped", "dynamic"), (10.0, "dropped", "still")]
    assert len(result.clips) == 2


def test_content_detector_scores_bit_identical_to_pyscenedetect(multi_scene):
    """Our ContentDetector sums its distances with OpenCV: every frame's score must equal PySceneDetect's."""
    import av
    from scenedetect.common import FrameTimecode

    from viclip.curation.scenes import _ContentDetector

    theirs, ours = ContentDetector(), _ContentDetector()
    scores = []
    with av.open(str(multi_scene[0])) as c:
        for i, frame in enumerate(c.decode(video=0)):
            bgr, tc = frame.to_ndarray(format="bgr24"), FrameTimecode(i, fps=float(FPS))
            theirs.process_frame(tc, bgr)
            ours.process_frame(tc, bgr)
            scores.append((theirs._frame_score, ours._frame_score))
    assert all(a == b for a, b in scores) and max(a for a, _ in scores) > 27
