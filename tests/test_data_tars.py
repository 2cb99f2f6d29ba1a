"""ShardWriter: tars rotated at a limit and renamed into place when complete, sizes.json, no partial tar;
the one member-name rule and the member size cap of every reader."""

from __future__ import annotations

import json
import tarfile

import pytest

from viclip.data.tars import ShardWriter, iter_tar_samples, member_key, read_member
from viclip.errors import DataError


def test_shard_writer_rotates_atomically_and_records_sizes(tmp_path):
    with ShardWriter(tmp_path, max_samples=3) as w:
        keys = [w.write(b"mp4-%d" % i, f"caption {i}", {"video_id": f"v{i}", "start": 1.5}) for i in range(7)]
    assert keys[:4] == ["00000000000", "00000000001", "00000000002", "00001000000"]
    assert all("." not in k for k in keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00001.tar", "00002.tar", "sizes.json"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 1}
    with tarfile.open(tmp_path / "00001.tar") as tar:
        assert tar.getnames()[:3] == ["00001000000.mp4", "00001000000.txt", "00001000000.json"]
        meta = json.loads(tar.extractfile("00001000000.json").read())
    assert meta == {"video_id": "v3", "start": 1.5, "caption": "caption 3"}
    with ShardWriter(tmp_path, max_samples=3, start_shard=3) as w:  # a later job appends
        w.write(b"x", "later", {})
    assert json.loads((tmp_path / "sizes.json").read_text())["00003.tar"] == 1
    assert len(json.loads((tmp_path / "sizes.json").read_text())) == 4


def test_shard_writer_leaves_no_partial_tar_on_error(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=2) as w:
        for i in range(3):
            w.write(b"x", f"c{i}", {})
        raise RuntimeError("job killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar"]  # no temp file, no sizes.json


def test_shard_writer_removes_a_killed_runs_partial_tar(tmp_path):
    (tmp_path / ".00000.tar.tmp999-0").write_bytes(b"half a tar")  # as if SIGKILLed mid-shard
    with ShardWriter(tmp_path, max_samples=2) as w:
        w.write(b"x", "c", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "sizes.json"]


def test_member_key_is_one_rule_for_every_name_form():
    assert member_key("00000000001.mp4") == ("00000000001", "mp4")
    assert member_key("./00000000001.mp4") == ("00000000001", "mp4")  # tar -C dir -cf x.tar .
    assert member_key("/abs/dir/k.JSON") == ("abs/dir/k", "json")
    assert member_key("dir/k.seg.TXT") == ("dir/k", "seg.txt")  # the key ends at the first dot of the base name
    assert member_key("noext") is None and member_key(".hidden") is None and member_key("./") is None


def test_tar_written_from_a_directory_reads_by_key(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "00000000000.mp4").write_bytes(b"video")
    (src / "00000000000.txt").write_text("a caption")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(src, arcname=".")  # members ./, ./00000000000.mp4, ./00000000000.txt, as `tar -C src -cf x.tar .`
    with open(tmp_path / "x.tar", "rb") as f:
        [sample] = list(iter_tar_samples(f))
    assert sample == {"__key__": "00000000000", "mp4": b"video", "txt": b"a caption"}
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert read_member(tar, "./00000000000.txt", "x.tar") == b"a caption"
        with pytest.raises(DataError, match=r"x.tar: member ./00000000000.mp4 claims 5 bytes, more than max_member"):
            read_member(tar, "./00000000000.mp4", "x.tar", max_bytes=4)
        with pytest.raises(DataError, match="x.tar: no member k.mp4"):
            read_member(tar, "k.mp4", "x.tar")
    with open(tmp_path / "x.tar", "rb") as f:  # the stream reader marks the sample instead of reading it
        [sample] = list(iter_tar_samples(f, max_member_bytes=6))
    assert sample["mp4"] == b"video" and "txt" not in sample and "txt claims 9 bytes" in sample["__oversized__"]
