"""ShardWriter: tars rotated at a limit and renamed into place when complete, sizes.json, no partial tar."""

from __future__ import annotations

import json
import tarfile

import pytest

from viclip.data.tars import ShardWriter


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
