"""The curation pipeline on web-shaped sources (viclip.testing.corpus): exact clips or a stated failure.

Every generated picture carries its index, so a kept clip must hold exactly the source frames of its
span ``[start, end)``, upright and in square pixels, at their presentation times; every other case
gives the failed row (or dropped row) that its corpus entry states. Nothing may hang or crash.
"""

import io
import json
import multiprocessing
import os
import signal
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import scenedetect
from scenedetect.detectors import ContentDetector

from viclip import read_video
from viclip.curation.clips import CurationConfig, process_source
from viclip.curation.extract import ExtractConfig
from viclip.curation.scenes import scan_video
from viclip.curation.sources import Source, list_folder
from viclip.curation.stages import run_stage
from viclip.curation.table import read_tables
from viclip.testing.corpus import (
    CASE_NAMES,
    LONG_GOP_SECONDS,
    CorpusCase,
    sample_footage,
    top_level_boxes,
    write_corpus,
)

TIMEOUT = 40  # seconds per test; a case takes well under 2 s
TOL = 1e-3    # seconds: timestamps are in 1/1000 s or finer, frames at least 20 ms apart
EVERY_FRAME = CurationConfig(extract=ExtractConfig(fps=0))
FPS, SECONDS = 20, 11.0  # the fewest frames that still put a keyframe between the long-GOP video's cuts


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so the pipeline's ``except Exception`` cannot swallow it."""


@pytest.fixture(autouse=True)
def deadline():
    def on_alarm(signum, frame):
        raise Hang(f"no result within {TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, CorpusCase]:
    return {c.name: c for c in write_corpus(tmp_path_factory.mktemp("corpus"), seconds=SECONDS, fps=FPS)}


def decode(mp4: bytes) -> tuple[list[np.ndarray], np.ndarray, object]:
    """RGB frames, their times (s) and the stream's sample aspect ratio."""
    with av.open(io.BytesIO(mp4)) as c:
        sar = c.streams.video[0].sample_aspect_ratio
        frames = list(c.decode(video=0))
        return [f.to_ndarray(format="rgb24") for f in frames], np.array([f.time for f in frames]), sar


def slot_frames(frames: np.ndarray, times: np.ndarray, fps: float) -> list[int]:
    """The source frames a clip at ``fps`` keeps: the first at or after each ``1/fps`` slot (ExtractConfig)."""
    if not fps:
        return [int(k) for k in frames]
    kept: list[int] = []
    for k in frames:
        if (times[k] - times[frames[0]]) * fps >= len(kept) - 1e-6:
            kept.append(int(k))
    return kept


def check_clip(case: CorpusCase, row: dict, mp4: bytes, cfg: CurationConfig) -> None:
    label = f"{case.name} clip [{row['start']:.3f}, {row['end']:.3f})"
    frames, times, sar = decode(mp4)
    in_span = np.nonzero((case.times >= row["start"] - TOL) & (case.times < row["end"] - TOL))[0]
    assert len(in_span), f"{label}: holds no source frame"
    if case.damaged and in_span[0] < case.damaged[1] and in_span[-1] >= case.damaged[0]:
        return  # frames of a damaged GOP may decode to anything
    h, w = frames[0].shape[:2]
    dw, dh = case.display_size
    scale = min(1.0, cfg.extract.short_side / min(dw, dh))
    assert abs(w - dw * scale) <= 2 and abs(h - dh * scale) <= 2, \
        f"{label}: {w}x{h}, but players show {dw:.1f}x{dh:.1f} ({case.note})"
    assert sar in (None, 0, 1), f"{label}: clip pixels are not square (SAR {sar})"
    assert row["start"] == pytest.approx(case.times[in_span[0]], abs=TOL), f"{label}: does not start at a frame"
    got = [case.frame_index(f) for f in frames]
    want = slot_frames(in_span, case.times, cfg.extract.fps)
    assert got == want, f"{label}: frames {got[:6]}...{got[-3:]} != source frames {want[:6]}...{want[-3:]}"
    np.testing.assert_allclose(row["start"] + times - times[0], case.times[got], atol=TOL,
                               err_msg=f"{label}: frame times differ from the source's")
    assert row["frames"] == len(got)


def check_rows(case: CorpusCase, rows: list[dict], clips: list[bytes], cfg: CurationConfig) -> None:
    """The case's stated outcome: exact clips, its failed row, or only dropped rows."""
    failed = [r for r in rows if r["status"] == "failed"]
    if case.expect == "failed" or (case.expect == "clips_or_failed" and failed):
        assert len(rows) == 1 and failed, f"{case.name}: expected one failed row ({case.note}), got {rows}"
        assert failed[0]["reason"] in case.reasons, \
            f"{case.name}: failed with reason {failed[0]['reason']!r} ({failed[0].get('error')}), " \
            f"expected one of {case.reasons}"
        return
    assert not failed, f"{case.name} ({case.note}) failed: {failed[0]['reason']!r} {failed[0].get('error')}"
    kept = [r for r in rows if r["status"] == "kept"]
    if case.expect == "dropped":
        assert rows and not kept and {r["reason"] for r in rows} <= set(case.reasons), \
            f"{case.name}: expected only rows dropped {case.reasons} ({case.note}), got {rows}"
        return
    assert len(kept) == len(clips) and kept, f"{case.name}: no clip kept ({case.note})"
    scene_starts = case.times[[0, *case.cuts]]
    starts = np.array([r["start"] for r in rows])
    if case.damaged:  # garbage frames may add cuts inside the damaged GOP; the scene before it is kept whole
        first_cut = case.times[case.cuts[0]]
        assert any(r["start"] == 0.0 and r["end"] == pytest.approx(first_cut, abs=TOL) for r in kept), \
            f"{case.name}: the scene before the damage is not kept whole"
        undamaged = (starts < case.times[case.damaged[0]]) | (starts >= case.times[case.damaged[1]])
        starts = starts[undamaged]
        scene_starts = scene_starts[(scene_starts < case.times[case.damaged[0]])
                                    | (scene_starts >= case.times[case.damaged[1]])]
    assert starts.shape == scene_starts.shape and np.allclose(starts, scene_starts, atol=TOL), \
        f"{case.name}: clips start at {starts.round(3)}, scenes at {scene_starts.round(3)}"
    for row, mp4 in zip(kept, clips):
        check_clip(case, row, mp4, cfg)


def test_corpus_files_have_the_shapes_they_claim(corpus):
    assert tuple(corpus) == CASE_NAMES
    probe = {}
    for name, case in corpus.items():
        with av.open(str(case.path)) as c:
            if not c.streams.video:
                probe[name] = None
                continue
            s = c.streams.video[0]
            rotation = next(c.decode(s)).rotation
            c.seek(0)
            packets = [(p.pts, p.is_keyframe) for p in c.demux(s) if p.pts is not None]
            probe[name] = {"codec": s.codec_context.name, "pix_fmt": s.codec_context.pix_fmt,
                           "size": (s.codec_context.width, s.codec_context.height), "sar": s.sample_aspect_ratio,
                           "rotation": rotation, "packets": packets,
                           "keys": [round(float(p * s.time_base) * FPS) for p, k in packets if k]}
    assert probe["long_gop"]["keys"] == [0, round(LONG_GOP_SECONDS * FPS)]
    assert not set(probe["long_gop"]["keys"]) & set(corpus["long_gop"].cuts)
    pk = probe["open_gop"]["packets"]
    leading = [p for i, (p, _) in enumerate(pk) if any(k and q > p for q, k in pk[:i])]
    assert len(leading) >= 3  # pictures shown before the keyframe that precedes them in decode order
    assert probe["rotated"]["rotation"] == -90  # FFmpeg's counterclockwise angle: players turn it clockwise
    assert probe["anamorphic"]["sar"] == corpus["anamorphic"].sar == Fraction(4, 3)
    assert probe["h264_10bit"]["pix_fmt"] == "yuv420p10le"
    assert probe["hevc"]["codec"] == "hevc"
    assert probe["odd_width"]["size"][0] % 2 == 1 and probe["two_pixels_wide"]["size"][0] == 2
    ts = [p for p, _ in sorted(probe["ts_discontinuity"]["packets"])]
    assert len(set(ts)) < len(ts)  # the second part's timestamps repeat the first part's
    assert top_level_boxes(corpus["moov_end"].path.read_bytes())[-1] == b"moov"
    assert top_level_boxes(corpus["moov_start"].path.read_bytes()).index(b"moov") < \
        top_level_boxes(corpus["moov_start"].path.read_bytes()).index(b"mdat")
    assert probe["audio_only"] is None and len(probe["single_frame"]["packets"]) == 1
    case = corpus["zeroed"]
    shown, error = [], None
    try:
        with av.open(str(case.path)) as c:
            for f in c.decode(video=0):
                shown.append(case.frame_index(f.to_ndarray(format="rgb24")))
    except av.error.InvalidDataError as e:  # FFmpeg refuses some zeroed slices, conceals others
        error = e
    first = case.damaged[0]
    assert shown[:first] == list(range(first))
    assert error is not None or shown[first:first + 5] != list(range(first, first + 5))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_frame_of_each_case_or_its_stated_failure(corpus, name):
    case = corpus[name]
    result = process_source(Source(name, str(case.path)), EVERY_FRAME)
    check_rows(case, result.rows, result.clips, EVERY_FRAME)


def _stage_in_own_session(folder: str, out: str) -> None:
    os.setsid()  # its pool worker joins this session, so one killpg ends both
    run_stage(list_folder(folder), out, videos_per_shard=4, workers=1, progress=False)


def test_stage_over_the_corpus_folder_with_default_settings(corpus, tmp_path):
    folder = next(iter(corpus.values())).path.parent
    # a forked process (no second import of torch) that can be killed if a worker hangs
    proc = multiprocessing.get_context("fork").Process(target=_stage_in_own_session, args=(str(folder), str(tmp_path)))
    proc.start()
    proc.join(TIMEOUT - 5)
    if proc.is_alive():
        os.killpg(proc.pid, signal.SIGKILL)
        proc.join()
        pytest.fail(f"run_stage over the corpus did not finish within {TIMEOUT - 5} s")
    assert proc.exitcode == 0, "run_stage raised (its traceback is in the captured stderr)"
    rows = read_tables([tmp_path]).to_pylist()
    mp4s = {}
    for tar in tmp_path.glob("*.tar"):
        with tarfile.open(tar) as t:
            mp4s.update({m.name[:-4]: t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".mp4")})
    assert json.loads((tmp_path / "sizes.json").read_text())
    assert {r["video_id"] for r in rows} == {c.name for c in corpus.values()}
    wrong = {}
    for case in corpus.values():
        mine = sorted((r for r in rows if r["video_id"] == case.name), key=lambda r: r["clip_index"])
        try:
            check_rows(case, mine, [mp4s[r["clip_key"]] for r in mine if r["status"] == "kept"], CurationConfig())
        except AssertionError as e:
            wrong[case.name] = str(e).splitlines()[0]
    assert not wrong, "\n".join(wrong.values())  # every case's verdict, not just the first


@pytest.fixture(scope="module")
def footage() -> dict[str, Path]:
    return sample_footage()


@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes"])
def test_real_footage_cut_as_pyscenedetect_cuts_it_and_its_clips_decode(footage, name):
    path = footage[name]
    theirs = [s[0].frame_num for s in scenedetect.detect(str(path), ContentDetector(threshold=27.0))[1:]]
    assert scan_video(path).cuts == theirs
    result = process_source(Source(name, str(path)), CurationConfig())
    assert not result.failed and result.clips, result.rows
    for row, mp4 in zip([r for r in result.rows if r["status"] == "kept"], result.clips):
        frames = read_video(mp4, num_frames=4)
        assert tuple(frames.shape) == (4, row["height"], row["width"], 3) and frames.float().std() > 5
