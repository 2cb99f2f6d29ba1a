"""Official annotation formats (JSON list, Kinetics list and CSV) and the evaluation Dataset."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from viclip.data.annotations import VideoTextDataset, load_kinetics, load_video_text_annotations
from viclip.data.transforms import VideoTransform
from viclip.data.video import write_mp4
from viclip.errors import DataError


@pytest.fixture
def root(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    for name in ("a.mp4", "b.mp4", "abc_000010_000020.mp4", "def_000000_000010.mp4"):
        (tmp_path / name).write_bytes(write_mp4(frames))
    (tmp_path / "broken.mp4").write_bytes(b"not an mp4" * 30)
    return tmp_path


def test_video_text_json_with_string_and_list_captions(root, caplog):
    ann = root / "ret.json"
    ann.write_text(json.dumps([
        {"video": "a.mp4", "caption": "a dog runs"},
        {"video": "b.mp4", "caption": ["a cat", "a cat sleeps"]},
        {"video": "gone1.mp4", "caption": "x"},
        {"video": "gone2.mp4", "caption": "y"},
    ]))
    with caplog.at_level(logging.WARNING):
        records = load_video_text_annotations(ann, root)
    assert [r.captions for r in records] == [("a dog runs",), ("a cat", "a cat sleeps")]
    assert records[0].video == str(root / "a.mp4")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 4 videos" in warnings[0]  # one line with the count
    with pytest.raises(FileNotFoundError, match="2 of 4"):
        load_video_text_annotations(ann, root, missing="error")
    assert len(load_video_text_annotations(ann, root, missing="keep")) == 4


def test_malformed_annotations_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"video": "a.mp4", "caption": "ok"}, {"video": "b.mp4"}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 1 needs the fields"):
        load_video_text_annotations(bad, tmp_path, missing="keep")
    bad.write_text('{"video": "a.mp4"}')
    with pytest.raises(ValueError, match="JSON list"):
        load_video_text_annotations(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_video_text_annotations(tmp_path / "nope.json", tmp_path)


def test_a_caption_is_a_string_or_a_list_of_strings(tmp_path):
    # A dict caption used to give its first key as the caption; a number its digits' error elsewhere.
    bad = tmp_path / "dict.json"
    for caption in ({"en": "a dog runs", "de": "ein Hund"}, 3, [], ["ok", 2]):
        bad.write_text(json.dumps([{"video": "a.mp4", "caption": "fine"}, {"video": "b.mp4", "caption": caption}]))
        with pytest.raises(DataError, match=r"dict.json: entry 1 \('b.mp4'\): caption must be a string or a list"):
            load_video_text_annotations(bad, tmp_path, missing="keep")
        with pytest.raises(DataError, match=r"dict.json: entry 1"):
            load_kinetics(bad, tmp_path, missing="keep")


def test_empty_lists_and_bad_csv_values_name_the_file(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DataError, match=r"empty.json: the annotation list is empty"):
        load_video_text_annotations(empty, tmp_path)
    with pytest.raises(DataError, match=r"empty.json: the annotation list is empty"):
        load_kinetics(empty, tmp_path)
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(DataError, match=r"val.csv: the annotation list is empty"):
        load_kinetics(csv, tmp_path)
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,1,2,val\nzumba,abd,xx,2,val\n")
    with pytest.raises(DataError, match=r"val.csv: line 3: time_start='xx' is not a number of seconds"):
        load_kinetics(csv, tmp_path)
    with pytest.raises(DataError, match=r"val.csv: no row has split=test"):
        load_kinetics(csv, tmp_path, split="test")
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,1,2,val\n")
    (tmp_path / "classes.json").write_text('{"zumba": 0}')
    with pytest.raises(DataError, match=r"classes.json: expected one class name a line"):
        load_kinetics(csv, tmp_path, class_names=tmp_path / "classes.json", split="val")


def test_kinetics_json_list_and_class_file(root):
    ann = root / "k.json"
    ann.write_text(json.dumps([{"video": "a.mp4", "caption": "riding a bike"},
                               {"video": "b.mp4", "caption": "abseiling"}]))
    records, names = load_kinetics(ann, root)
    assert names == ["abseiling", "riding a bike"]  # sorted when no class list is given
    assert [r.label for r in records] == [1, 0]
    (root / "classes.txt").write_text("riding a bike\nabseiling\nzumba\n")
    records, names = load_kinetics(ann, root, class_names=root / "classes.txt")
    assert names == ["riding a bike", "abseiling", "zumba"] and [r.label for r in records] == [0, 1]
    with pytest.raises(ValueError, match="not in the class list"):
        load_kinetics(ann, root, class_names=["zumba"])


def test_kinetics_csv_with_filename_pattern_and_split(root, caplog):
    csv = root / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "riding a bike,abc,10,20,val\n"
                   "abseiling,def,0,10,val\n"
                   "abseiling,zzz,5,15,val\n"
                   "abseiling,tra,0,10,train\n")
    with caplog.at_level(logging.WARNING):
        records, names = load_kinetics(csv, root, split="val")
    assert [r.video for r in records] == [str(root / "abc_000010_000020.mp4"), str(root / "def_000000_000010.mp4")]
    assert [r.captions[0] for r in records] == ["riding a bike", "abseiling"]
    assert names == ["abseiling", "riding a bike"]
    assert "1 of 3 videos" in caplog.text  # zzz is missing; the train row was filtered first
    records, _ = load_kinetics(csv, root, filename_pattern="{label}/{youtube_id}.mp4", missing="keep")
    assert records[0].video == str(root / "riding a bike" / "abc.mp4")
    (root / "bad.csv").write_text("name,file\nx,y\n")
    with pytest.raises(ValueError, match="Kinetics CSV needs the columns"):
        load_kinetics(root / "bad.csv", root)


def test_eval_dataset_decodes_and_skips_unreadable_videos(root):
    ann = root / "ret.json"
    ann.write_text(json.dumps([{"video": v, "caption": "c"} for v in ("a.mp4", "broken.mp4", "b.mp4")]))
    records = load_video_text_annotations(ann, root)
    ds = VideoTextDataset(records, num_frames=4, transform=VideoTransform(False, image_size=16))
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=VideoTextDataset.collate)))
    assert batch["video"].shape == (2, 4, 3, 16, 16)
    assert batch["index"].tolist() == [0, 2] and batch["skipped"] == [1]
    raw = VideoTextDataset(records, num_frames=4)[0]["video"]  # no transform: uint8 frames
    assert raw.dtype == torch.uint8 and raw.shape == (4, 32, 32, 3)
