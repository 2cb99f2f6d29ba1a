"""The synthetic demo data: layout, determinism, held-out pairs, and motion that the frames really show."""

import json
import tarfile

import numpy as np
import pytest

from viclip.data import video
from viclip.data.annotations import load_kinetics, load_video_text_annotations
from viclip.data.synthetic import (
    BACKGROUNDS,
    MOTION_TEXT,
    MOTIONS,
    ZERO_SHOT_CLASSES,
    held_out_pairs,
    make_synthetic,
)
from viclip.data.video import read_video
from viclip.errors import OutputError

SIZE = 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", n_train=48, n_eval=12, size=SIZE,
                          shard_size=20, seed=3)


def _train_samples(paths):
    for tar_path in sorted(paths.train_shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            for key in sorted({n.split(".")[0] for n in names}):
                yield (tar.extractfile(f"{key}.mp4").read(), tar.extractfile(f"{key}.txt").read().decode(),
                       json.loads(tar.extractfile(f"{key}.json").read()))


def _centroid_path(frames: np.ndarray, background: str) -> np.ndarray:
    """Centre of the pixels far from the background colour, frame by frame."""
    diff = np.abs(frames.astype(np.int16) - np.array(BACKGROUNDS[background])).sum(-1)
    out = []
    for d in diff:
        ys, xs = np.nonzero(d > 80)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def test_layout_sizes_and_idempotence(synth):
    sizes = json.loads((synth.train_shards / "sizes.json").read_text())
    assert sizes == {"00000.tar": 20, "00001.tar": 20, "00002.tar": 8}
    stamp = {p: p.stat().st_mtime_ns for p in synth.root.rglob("*") if p.is_file()}
    again = make_synthetic(synth.root, n_train=48, n_eval=12, size=SIZE, shard_size=20, seed=3)
    assert again == synth
    assert {p: p.stat().st_mtime_ns for p in synth.root.rglob("*") if p.is_file()} == stamp  # nothing rewritten


def test_deterministic_by_seed(synth, tmp_path, monkeypatch):
    """The same seed gives the same frames, captions and metadata; another seed other ones. The frames are
    compared before encoding: x264 here is not bit-exact from run to run (2-3 of 72 encodes of identical
    frames differed between make_synthetic runs in one process, whatever its thread settings), so the mp4
    bytes are not the claim."""
    encoded = []
    real = video.write_mp4
    monkeypatch.setattr(video, "write_mp4", lambda frames, **kw: encoded.append(frames.tobytes()) or real(frames, **kw))

    def run(name: str, seed: int) -> tuple[list[bytes], list]:
        encoded.clear()
        paths = make_synthetic(tmp_path / name, n_train=48, n_eval=12, size=SIZE, shard_size=20, seed=seed)
        return list(encoded), [sample[1:] for sample in _train_samples(paths)]

    first, again, other = run("first", 3), run("again", 3), run("other", 4)
    assert len(first[0]) == 72 and first == again  # 48 training and 24 evaluation clips, frame for frame
    assert first[0] != other[0] and first[1] != other[1]
    assert first[1] == [sample[1:] for sample in _train_samples(synth)]  # the fixture's too (same seed)


def test_training_clips_show_the_motion_their_caption_names(synth):
    held = set(held_out_pairs())
    checked = 0
    for mp4, caption, meta in _train_samples(synth):
        objects = meta["objects"]
        assert meta["caption"] == caption and meta["video_id"]
        assert all((o["colour"], o["shape"]) not in held for o in objects)  # held-out pairs never trained on
        for o in objects:
            assert MOTION_TEXT[o["motion"]] in caption
        if len(objects) != 1:
            continue
        path = _centroid_path(read_video(mp4, num_frames=8).numpy(), meta["background"])
        dx, dy = MOTIONS[objects[0]["motion"]]
        shift = path[-1] - path[0]
        assert shift @ np.array([dx, dy]) > 0.25 * SIZE, (caption, shift)  # clear travel along the motion
        assert abs(shift @ np.array([dy, dx])) < 0.1 * SIZE, (caption, shift)  # and none across it
        checked += 1
    assert checked >= 30


def test_zero_shot_set_is_balanced_motions_on_held_out_pairs(synth):
    records, names = load_kinetics(synth.zeroshot_annotations, synth.zeroshot_root,
                                   class_names=synth.zeroshot_classes, missing="error")
    assert names == ZERO_SHOT_CLASSES and len(names) == 4
    assert np.bincount([r.label for r in records]).tolist() == [3, 3, 3, 3]
    frames = read_video(records[0].video, num_frames=8).numpy()
    colours = {tuple(c) for c in frames.reshape(-1, 3)}
    assert len(colours) > 1


def test_retrieval_set_has_several_captions_per_video(synth):
    records = load_video_text_annotations(synth.retrieval_annotations, synth.retrieval_root, missing="error")
    assert len(records) == 12 and all(len(r.captions) == 2 for r in records)
    assert all(r.captions[1].startswith(r.captions[0]) and "background" in r.captions[1] for r in records)


def test_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        make_synthetic(tmp_path, n_train=4, n_eval=4, size=SIZE)


@pytest.mark.parametrize("part", ["train", "zeroshot", "retrieval"])
def test_never_deletes_a_part_it_did_not_write(tmp_path, part):
    """A DIR/train/ (or zeroshot/, retrieval/) of the user's, without our markers, is refused, not rebuilt."""
    (tmp_path / part).mkdir()
    (tmp_path / part / "precious.mp4").write_bytes(b"user data")
    with pytest.raises(OutputError, match=f"'{part}'.*will not delete"):
        make_synthetic(tmp_path, n_train=4, n_eval=4, size=SIZE)
    assert (tmp_path / part / "precious.mp4").read_bytes() == b"user data"


def test_a_killed_run_is_rebuilt(tmp_path):
    """A run killed after STARTED.json left parts that are ours: the next run replaces them."""
    make_synthetic(tmp_path, n_train=4, n_eval=4, size=SIZE)
    (tmp_path / "COMPLETE.json").rename(tmp_path / "STARTED.json")
    (tmp_path / "train" / "leftover.tar").write_bytes(b"partial")
    paths = make_synthetic(tmp_path, n_train=4, n_eval=4, size=SIZE)
    assert not (tmp_path / "train" / "leftover.tar").exists() and not (tmp_path / "STARTED.json").exists()
    assert (tmp_path / "COMPLETE.json").is_file() and paths.train_shards.is_dir()
