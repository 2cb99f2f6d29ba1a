"""tools/export_subset.py: a curated subset as mp4 files plus the table text-to-video trainers read."""

import csv
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from viclip.curation.export import ExportConfig, export_subset
from viclip.curation.subsets import SubsetSpec, build_subset
from viclip.curation.table import rows_to_table, write_table
from viclip.data.tars import ShardWriter
from viclip.data.video import write_mp4
from viclip.errors import DataError
from viclip.testing.videos import pan_frames


@pytest.fixture
def stage(tmp_path):
    """A finished stage of 4 kept clips (aesthetic 3, 4, 5, 6) and one dropped row, extracted for training."""
    out = tmp_path / "scored"
    rows = []
    with ShardWriter(out) as writer:
        for i in range(4):
            mp4 = write_mp4(pan_frames(6, 32, 16, speed=1, seed=i), fps=4)
            key = writer.write(mp4, f"caption {i}")
            rows.append({"clip_id": f"v{i}_0", "video_id": f"v{i}", "status": "kept", "clip_tar": "00000.tar",
                         "clip_key": key, "caption": f"caption {i}", "frames": 6, "height": 16, "width": 32,
                         "fps": 4.0, "aesthetic": 3.0 + i, "clip_text_sim": 0.2 + i / 100})
    rows.append({"clip_id": "v9_0", "video_id": "v9", "status": "dropped", "reason": "still"})
    write_table(rows_to_table(rows), out / "00000.parquet")
    (out / "00000.stats.json").write_text("{}")
    (out / "config.json").write_text(json.dumps({"config": {"extract": {"fps": 4.0, "tune": "fastdecode"}}}))
    return out


def test_aes_subset_exports_clips_and_the_trainer_table(stage, tmp_path):
    subset = tmp_path / "aes.parquet"
    build_subset([stage], subset, SubsetSpec(rule="aes", aesthetic_threshold=4.0))
    report = export_subset(subset, tmp_path / "export", ExportConfig(), progress=False)
    with open(tmp_path / "export" / "metadata.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "caption", "frames", "height", "width", "fps", "aesthetic", "similarity"]
    assert [r["caption"] for r in table] == ["caption 1", "caption 2", "caption 3"]  # aesthetic >= 4
    assert [float(r["aesthetic"]) for r in table] == [4.0, 5.0, 6.0]
    assert np.allclose([float(r["similarity"]) for r in table], [0.21, 0.22, 0.23])
    assert {(r["frames"], r["height"], r["width"], float(r["fps"])) for r in table} == {("6", "16", "32", 4.0)}
    keys = ["00000000001", "00000000002", "00000000003"]
    assert [r["path"] for r in table] == [str(tmp_path / "export" / "clips" / f"{k}.mp4") for k in keys]
    # the bytes are the clip as stored, and the report warns that they were made for training
    with tarfile.open(stage / "00000.tar") as tar:
        assert (tmp_path / "export" / "clips" / f"{keys[0]}.mp4").read_bytes() == tar.extractfile(
            f"{keys[0]}.mp4").read()
    assert report.copied == 3 and report.extract["fps"] == 4.0 and "re-extract" in report.warnings[0]
    again = export_subset(subset, tmp_path / "export", ExportConfig(format="parquet", relative_paths=True),
                          progress=False)
    assert again.copied == 0 and again.clips == 3 and (tmp_path / "export" / "metadata.parquet").is_file()


def test_missing_columns_and_tars_are_named(stage, tmp_path):
    subset = tmp_path / "aes.parquet"
    build_subset([stage], subset, SubsetSpec(rule="aes"))
    (stage / "00000.tar").rename(stage / "moved.tar")
    with pytest.raises(FileNotFoundError, match=r"clip tar not found: .*00000\.tar"):
        export_subset(subset, tmp_path / "e", ExportConfig(), progress=False)
    with pytest.raises(DataError, match=r"clip_text_sim_v2"):
        export_subset(subset, tmp_path / "e", ExportConfig(similarity_column="clip_text_sim_v2"), progress=False)


@pytest.mark.parametrize("key", ["../../escaped", "ABSOLUTE", "sub/escaped", ".."])
def test_a_clip_key_that_is_a_path_is_refused(stage, tmp_path, key):
    """clip_key values join into output paths: with a tar member of that name, a path in one would write
    outside --out (the old export wrote ../../escaped.mp4 beside the export)."""
    import io

    key = str(tmp_path / "abs_escaped") if key == "ABSOLUTE" else key
    with tarfile.open(stage / "00000.tar", "a") as tar:
        info = tarfile.TarInfo(f"{key}.mp4")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"mp4!"))
    subset = tmp_path / "aes.parquet"
    build_subset([stage], subset, SubsetSpec(rule="aes"))
    table = pq.read_table(subset)
    keys = table.column("clip_key").to_pylist()
    table = table.set_column(table.schema.get_field_index("clip_key"), "clip_key", pa.array([key] + keys[1:]))
    pq.write_table(table, subset)
    with pytest.raises(DataError, match="is not a plain file name"):
        export_subset(subset, tmp_path / "export" / "deep", ExportConfig(clips=str(stage)), progress=False)
    assert not [p for p in tmp_path.rglob("*escaped*") if p.suffix == ".mp4"]
    assert not (tmp_path / "export").exists()
