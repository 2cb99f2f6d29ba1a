"""Embeddings at scale (viclip.embeddings, tools/embed_clips.py) and deduplication / leakage checks
(viclip.curation.dedup, tools/dedup_clips.py) on generated clips, with a tiny random-weight ViCLIP: the real
architecture at test size, so the embeddings are arbitrary but their path, equality and bookkeeping are real."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir

from viclip import embeddings
from viclip.commands.dedup_clips import main as dedup_main
from viclip.curation.dedup import find_duplicates_and_leaks, similar_pairs
from viclip.curation.stage_configs import DedupConfig, EmbedConfig
from viclip.curation.subsets import SubsetSpec, build_subset
from viclip.data.annotations import youtube_id
from viclip.data.tars import ShardWriter
from viclip.data.video import write_mp4
from viclip.embeddings import embeddings_schema, run_embedding
from viclip.errors import DataError
from viclip.eval.runner import evaluate
from viclip.model import create_model, export_safetensors
from viclip.testing.videos import pan_frames

ROOT = Path(__file__).resolve().parents[1]
N_CLIPS = 6


def read_embeddings(out: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted(out.glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            assert row["clip_id"] not in rows, f"{row['clip_id']} embedded twice"
            rows[row["clip_id"]] = row
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    ckpt = export_safetensors(create_model("tiny"), tmp / "tiny.safetensors")
    folder = tmp / "videos"
    folder.mkdir()
    mp4s = [write_mp4(pan_frames(12, 48, 32, speed=1 + i, seed=i), fps=8) for i in range(N_CLIPS)]
    captions = [f"a panning shot number {i}" for i in range(N_CLIPS)]
    for i, mp4 in enumerate(mp4s):
        (folder / f"clip{i}.mp4").write_bytes(mp4)
        if i % 2 == 0:
            (folder / f"clip{i}.txt").write_text(captions[i])
    with ShardWriter(tmp / "tars", max_samples=3) as writer:
        for i, mp4 in enumerate(mp4s):
            writer.write(mp4, captions[i], {"clip_id": f"clip{i}", "video_id": f"yt{i:09d}", "aesthetic": i / 2})
    return {"tmp": tmp, "ckpt": str(ckpt), "folder": folder, "tars": tmp / "tars", "captions": captions}


def tar_embeddings(setup) -> dict[str, dict]:
    """The tar shards embedded in one process (once per module: a rerun skips the done shards)."""
    out = setup["tmp"] / "emb_tars"
    run_embedding([str(setup["tars"])], out, EmbedConfig(checkpoint=setup["ckpt"], workers=0), progress=False)
    return read_embeddings(out)


def test_embeddings_equal_the_eval_cache_for_the_same_checkpoint_and_protocol(setup):
    tmp = setup["tmp"]
    annotation = tmp / "ann.json"
    items = [{"video": f"clip{i}.mp4", "caption": c} for i, c in enumerate(setup["captions"])]
    annotation.write_text(json.dumps(items))
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        evaluate(compose("eval", overrides=[
            "task=synthetic_retrieval", f"task.annotation={annotation}", f"task.video_root={setup['folder']}",
            f"checkpoint={setup['ckpt']}", f"cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'eval'}",
            "num_workers=0"]))
    (cache_file,) = (tmp / "cache").glob("video-*.pt")
    cached = torch.load(cache_file, weights_only=True)["embeddings"]
    cfg = EmbedConfig(checkpoint=setup["ckpt"], workers=0)
    run_embedding([str(setup["folder"])], tmp / "emb_folder", cfg, progress=False)
    folder, tars = read_embeddings(tmp / "emb_folder"), tar_embeddings(setup)
    for i in range(N_CLIPS):
        for rows in (folder, tars):  # same decode, resize and forward; batches of other sizes differ by float noise
            got = torch.tensor(rows[f"clip{i}"]["video_embedding"])
            torch.testing.assert_close(got, cached[i], rtol=1e-5, atol=1e-6)
    # captions: the folder's from sidecar files (every other clip), the tars' from their .txt members
    assert [folder[f"clip{i}"]["similarity"] is not None for i in range(N_CLIPS)] == [True, False] * 3
    text_cache = max((tmp / "cache").glob("text-*.pt"), key=lambda p: p.stat().st_mtime)
    cached_text = torch.load(text_cache, weights_only=True)["embeddings"]
    for i in range(N_CLIPS):
        row = tars[f"clip{i}"]
        torch.testing.assert_close(torch.tensor(row["text_embedding"]), cached_text[i], rtol=1e-5, atol=1e-6)
        v, t = torch.tensor(row["video_embedding"]), torch.tensor(row["text_embedding"])
        assert row["similarity"] == pytest.approx(float(torch.cosine_similarity(v, t, dim=0)), abs=1e-6)
        assert row["video_id"] == f"yt{i:09d}" and row["aesthetic"] == pytest.approx(i / 2)


def test_resume_skips_done_shards_and_refuses_other_settings(setup, tmp_path):
    cfg = EmbedConfig(checkpoint=setup["ckpt"], workers=0)
    first = run_embedding([str(setup["tars"])], tmp_path, cfg, progress=False)
    assert first["done"] == 2 and first["clips"] == N_CLIPS
    before = (tmp_path / "00001.parquet").stat().st_mtime_ns
    (tmp_path / "00000.stats.json").unlink()  # as if killed before shard 0's done mark
    again = run_embedding([str(setup["tars"])], tmp_path, cfg, progress=False)
    assert again == {**again, "done": 1, "skipped": 1, "clips": 3}
    assert (tmp_path / "00001.parquet").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="different protocol"):
        run_embedding([str(setup["tars"])], tmp_path, EmbedConfig(checkpoint=setup["ckpt"], num_frames=4, workers=0),
                      progress=False)


def test_one_model_load_for_all_shards_and_none_for_a_finished_run(setup, tmp_path, monkeypatch):
    loads = []
    real = embeddings.load_model
    monkeypatch.setattr(embeddings, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    cfg = EmbedConfig(checkpoint=setup["ckpt"], clips_per_shard=2, workers=0)
    assert run_embedding([str(setup["folder"])], tmp_path, cfg, progress=False)["done"] == N_CLIPS // 2
    assert len(loads) == 1  # one runner, one model, three shards
    again = run_embedding([str(setup["folder"])], tmp_path, cfg, progress=False)
    assert (again["done"], again["skipped"], len(loads)) == (0, N_CLIPS // 2, 1)  # all done: nothing loaded


def test_unreadable_clip_gets_an_error_row(setup, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "good.mp4").write_bytes((setup["folder"] / "clip0.mp4").read_bytes())
    (folder / "bad.mp4").write_bytes(b"\x00" * 100)
    summary = run_embedding([str(folder)], tmp_path / "out", EmbedConfig(checkpoint=setup["ckpt"], workers=0),
                            progress=False)
    rows = read_embeddings(tmp_path / "out")
    assert summary["failed"] == 1 and rows["bad"]["video_embedding"] is None and "bad.mp4" in rows["bad"]["error"]
    assert rows["good"]["error"] is None and len(rows["good"]["video_embedding"]) == 64


def test_torchrun_embeds_each_clip_once_across_ranks(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tools" / "embed_clips.py"), "--input", str(setup["tars"]), "--out", str(tmp_path),
           "--checkpoint", setup["ckpt"], "--workers", "0", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = r"^(\d+) shards done, 0 done before \(of 1\); \d+ clips embedded, 0 failed"
    done = re.findall(line, proc.stdout, re.MULTILINE)
    assert done == ["1", "1"], proc.stdout  # one tar per rank, each rank's summary line
    rows = read_embeddings(tmp_path)
    assert sorted(rows) == [f"clip{i}" for i in range(N_CLIPS)]
    single = tar_embeddings(setup)
    for cid, row in rows.items():
        np.testing.assert_allclose(row["video_embedding"], single[cid]["video_embedding"], rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_clear_error(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run_embedding([str(setup["tars"])], tmp_path, EmbedConfig(checkpoint=str(tmp_path / "none.pth")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no videos"):
        run_embedding([str(empty)], tmp_path / "o", EmbedConfig(checkpoint=setup["ckpt"]))


# --- deduplication and leakage -------------------------------------------------------------------------------

DIM = 64


def write_shard(path: Path, ids: list[str], vectors: np.ndarray, video_ids: list[str | None],
                aesthetic: list[float | None]) -> None:
    rows = [{"clip_id": c, "video_id": v, "aesthetic": a, "video_embedding": e.tolist(), "text_embedding": None,
             "similarity": None, "error": None} for c, v, a, e in zip(ids, video_ids, aesthetic, vectors)]
    pq.write_table(pa.Table.from_pylist(rows, schema=embeddings_schema(DIM)), path)
    path.with_name(path.stem + ".stats.json").write_text("{}")


@pytest.fixture
def planted(tmp_path):
    """12 random clips over two shards; 3 and 7 are near copies of 0, 5 of 2; 4's source is in a Kinetics CSV,
    6's in an ActivityNet list; 8 is a near copy of an MSR-VTT video (whose name carries no YouTube id)."""
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((12, DIM)).astype(np.float32)
    for dup, of in ((3, 0), (7, 0), (5, 2)):
        vec[dup] = vec[of] + 0.01 * rng.standard_normal(DIM)
    ids = [f"c{i:02d}" for i in range(12)]
    video_ids = [f"src{i:08d}" for i in range(12)]  # 11 characters, as YouTube ids
    aesthetic = [4.0] * 12
    aesthetic[7] = 6.0  # the best-looking of group {0, 3, 7}
    aesthetic[2] = None  # a missing score ranks lowest: 5 is kept over 2
    emb = tmp_path / "emb"
    emb.mkdir()
    write_shard(emb / "00000.parquet", ids[:6], vec[:6], video_ids[:6], aesthetic[:6])
    write_shard(emb / "00001.parquet", ids[6:], vec[6:], video_ids[6:], aesthetic[6:])
    kinetics = tmp_path / "k400_test.csv"
    kinetics.write_text(f"label,youtube_id,time_start,time_end,split\nabseiling,{video_ids[4]},10,20,test\n"
                        "abseiling,zzzzzzzzzzz,0,10,test\n")
    anet = tmp_path / "anet_val.json"
    anet.write_text(json.dumps([{"video": f"v_{video_ids[6]}.mp4", "caption": "a paragraph"}]))
    msrvtt = tmp_path / "msrvtt_test1k.json"
    msrvtt.write_text(json.dumps([{"video": "video7020.mp4", "caption": "a man"}]))
    eval_emb = tmp_path / "eval_emb"
    eval_emb.mkdir()
    near = vec[8] + 0.01 * rng.standard_normal(DIM)
    write_shard(eval_emb / "00000.parquet", ["video7020", "video9999"], np.stack([near, rng.standard_normal(DIM)]),
                [None, None], [None, None])
    return {"tmp": tmp_path, "emb": emb, "eval_emb": eval_emb, "annotations": (str(kinetics), str(anet), str(msrvtt))}


def test_planted_duplicates_and_eval_overlap_are_flagged(planted):
    cfg = DedupConfig(threshold=0.95, keep_by="aesthetic", eval_annotations=planted["annotations"],
                      eval_embeddings=(str(planted["eval_emb"]),), eval_threshold=0.95, block_size=5)
    out = planted["tmp"] / "flags.parquet"
    report = find_duplicates_and_leaks([planted["emb"]], out, cfg)
    flags = {r["clip_id"]: r for r in pq.read_table(out).to_pylist()}
    dup_of = {c: r["duplicate_of"] for c, r in flags.items() if r["duplicate_of"]}
    assert dup_of == {"c00": "c07", "c03": "c07", "c02": "c05"}  # highest aesthetic kept; a missing one loses
    assert flags["c00"]["duplicate_group"] == flags["c03"]["duplicate_group"] == flags["c07"]["duplicate_group"]
    assert flags["c01"]["duplicate_group"] is None
    assert {c for c, r in flags.items() if r["eval_source"]} == {"c04", "c06"}
    assert flags["c04"]["eval_source"].endswith("k400_test.csv")
    assert flags["c06"]["eval_source"].endswith("anet_val.json")
    assert {c for c, r in flags.items() if r["eval_video"]} == {"c08"} and flags["c08"]["eval_video"] == "video7020"
    assert flags["c08"]["eval_similarity"] > 0.95
    assert {c for c, r in flags.items() if r["exclude"]} == {"c00", "c02", "c03", "c04", "c06", "c08"}
    assert report.duplicate_groups == 2 and report.duplicates_removed == 3 and report.excluded == 6
    assert report.eval_entries_without_source_id[planted["annotations"][2]] == 1
    assert json.loads(out.with_name("flags.parquet.json").read_text())["excluded"] == 6


@pytest.mark.parametrize("method", ["exact", "semdedup"])
def test_dedup_clips_ends_with_its_summary_lines(planted, method, monkeypatch, capsys):
    out = planted["tmp"] / f"{method}.parquet"
    monkeypatch.setattr(sys, "argv", ["dedup-clips", "--input", str(planted["emb"]), "--out", str(out),
                                      "--method", method, "--sample-per-cluster", "39"])
    dedup_main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (f"12 clips (0 without a finite embedding left out): 3 duplicates in 2 groups, 0 share a "
                         f"source with an evaluation file, 0 near an evaluation video; 3 excluded -> {out}; "
                         f"report in {out}.json")
    if method == "semdedup":
        assert re.fullmatch(rf"semdedup: 12 clips in \d+ clusters \(largest \d+\), \d+ pairs compared, 4 "
                            rf"near-duplicate pairs; [\d.]+ s; work in {re.escape(str(out))}.semdedup", lines[-2])


def test_keep_first_and_blocking_do_not_change_the_groups(planted):
    flags = []
    for block in (3, 5, 1000):
        out = planted["tmp"] / f"flags{block}.parquet"
        find_duplicates_and_leaks([planted["emb"]], out, DedupConfig(block_size=block))
        flags.append(pq.read_table(out).to_pylist())
    assert all(f == flags[0] for f in flags)
    assert {r["clip_id"]: r["duplicate_of"] for r in flags[0] if r["duplicate_of"]} == {
        "c03": "c00", "c07": "c00", "c05": "c02"}


def test_similar_pairs_match_the_full_matrix():
    rng = np.random.default_rng(1)
    vec = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((50, 8)).astype(np.float32)), dim=-1)
    full = vec @ vec.T
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.6}
    assert expected, "the threshold should give some pairs"
    assert {tuple(p) for p in similar_pairs(vec, 0.6, block_size=7).tolist()} == expected
    halves = np.concatenate([similar_pairs(vec, 0.6, block_size=7, rows=(0, 20)),
                             similar_pairs(vec, 0.6, block_size=7, rows=(20, 50))])
    assert sorted(map(tuple, halves.tolist())) == sorted(expected)  # slices of the work add up to the whole


def test_build_subset_excludes_flagged_clips(planted):
    out = planted["tmp"] / "flags.parquet"
    find_duplicates_and_leaks([planted["emb"]], out, DedupConfig(eval_annotations=planted["annotations"]))
    table = pa.table({"clip_id": [f"c{i:02d}" for i in range(12)], "status": ["kept"] * 12,
                      "aesthetic": pa.array([5.0] * 12, pa.float32())})
    pq.write_table(table, planted["tmp"] / "clips.parquet")
    subset = planted["tmp"] / "aes.parquet"
    report = build_subset([planted["tmp"] / "clips.parquet"], subset, SubsetSpec(rule="aes", exclude=str(out)))
    kept = pq.read_table(subset).column("clip_id").to_pylist()
    assert sorted(set(table.column("clip_id").to_pylist()) - set(kept)) == ["c03", "c04", "c05", "c06", "c07"]
    assert report.pool == 7


def test_source_ids_of_evaluation_names():
    assert youtube_id("abseiling/-4wsuPCjDBc_000010_000020.mp4") == "-4wsuPCjDBc"  # Kinetics
    assert youtube_id("v_QOlSCBRmfWY.mp4") == "QOlSCBRmfWY"  # ActivityNet
    assert youtube_id("-4wsuPCjDBc_5_15.avi") == "-4wsuPCjDBc"  # MSVD
    assert youtube_id("video7020.mp4") is None and youtube_id("12090392@N02_13482799053_87ef417396.mov") is None


def test_generated_clips_with_a_planted_copy_are_grouped(setup, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        (folder / f"clip{i}.mp4").write_bytes((setup["folder"] / f"clip{i}.mp4").read_bytes())
    (folder / "copy_of_clip1.mp4").write_bytes((setup["folder"] / "clip1.mp4").read_bytes())
    run_embedding([str(folder)], tmp_path / "emb", EmbedConfig(checkpoint=setup["ckpt"], workers=0),
                  progress=False)
    report = find_duplicates_and_leaks([tmp_path / "emb"], tmp_path / "flags.parquet", DedupConfig(threshold=0.999))
    flags = {r["clip_id"]: r["duplicate_of"] for r in pq.read_table(tmp_path / "flags.parquet").to_pylist()}
    assert flags == {"clip0": None, "clip1": None, "clip2": None, "copy_of_clip1": "clip1"}
    assert report.duplicate_groups == 1


def test_dedup_tool_errors_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dedup_clips.py", "--input", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "f.parquet")])
    with pytest.raises(SystemExit) as exit_info:
        dedup_main()
    expected = (f"dedup_clips.py: error: embedding shard not found: {tmp_path / 'none'} "
                "(give embed_clips' output directory)")
    assert exit_info.value.code == expected  # sys.exit(message): printed as one line, status 1


def test_non_finite_embeddings_are_counted_and_mixed_widths_named(tmp_path):
    """All-NaN embeddings are not "no duplicates": they are counted and left out; 64-d and 32-d shards mixed
    end in one line naming both files."""
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((4, DIM)).astype(np.float32)
    vec[1] = vec[0]  # a true duplicate pair among the finite rows
    vec[2:] = np.nan
    emb = tmp_path / "emb"
    emb.mkdir()
    write_shard(emb / "00000.parquet", ["a", "b", "c", "d"], vec, [None] * 4, [None] * 4)
    report = find_duplicates_and_leaks([emb], tmp_path / "f.parquet", DedupConfig())
    assert report.clips == 2 and report.non_finite == 2 and report.duplicates_removed == 1
    narrow = tmp_path / "narrow.parquet"
    rows = [{"clip_id": "z", "video_id": None, "aesthetic": None, "video_embedding": [0.5] * 32,
             "text_embedding": None, "similarity": None, "error": None}]
    pq.write_table(pa.Table.from_pylist(rows, schema=embeddings_schema(32)), narrow)
    with pytest.raises(DataError, match=r"narrow.parquet: .* width 32, but .*00000.parquet has width 64"):
        find_duplicates_and_leaks([emb / "00000.parquet", narrow], tmp_path / "g.parquet", DedupConfig())


def _tar_of(path: Path, members: list[tuple[str, bytes]], size: dict[str, int] | None = None) -> Path:
    """A tar written by hand (``tar -C dir -cf x.tar .`` names members ``./key.mp4``); ``size`` fakes claims."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if size:  # rewrite a header's size field (and checksum) to claim more than the member holds
        raw = bytearray(path.read_bytes())
        for name, claim in size.items():
            at = raw.index(name.encode())
            raw[at + 124:at + 136] = f"{claim:011o}\0".encode()
            raw[at + 148:at + 156] = b" " * 8
            raw[at + 148:at + 155] = f"{sum(raw[at:at + 512]):06o}\0".encode()
        path.write_bytes(bytes(raw))
    return path


def test_tar_member_names_and_bad_members_are_counted_not_fatal(setup, tmp_path):
    """./key.mp4 members are clips; a bad JSON, a non-UTF-8 caption, a member claiming 100 GB and a truncated
    tar each become a failed row naming the file, and the run goes on."""
    mp4 = (setup["folder"] / "clip0.mp4").read_bytes()
    tars = tmp_path / "tars"
    tars.mkdir()
    _tar_of(tars / "00000.tar", [("./a.mp4", mp4), ("./a.txt", b"a dotted clip"), ("./b.mp4", mp4),
                                 ("./b.json", b"{not json"), ("./c.mp4", mp4), ("./c.txt", b"\xff\xfe caption")])
    _tar_of(tars / "00001.tar", [("d.mp4", mp4), ("huge.mp4", mp4)], size={"huge.mp4": 100 << 30})
    good = _tar_of(tmp_path / "whole.tar", [("e.mp4", mp4), ("f.mp4", mp4)]).read_bytes()
    (tars / "00002.tar").write_bytes(good[:512 + len(mp4) + 1024])  # cut inside the second clip
    summary = run_embedding([str(tars)], tmp_path / "out", EmbedConfig(checkpoint=setup["ckpt"], workers=0),
                            progress=False)
    rows = read_embeddings(tmp_path / "out")
    assert rows["a"]["error"] is None and rows["a"]["text_embedding"] is not None  # read and captioned
    assert "00000.tar:b.json: not JSON" in rows["b"]["error"]
    assert "00000.tar:./c.txt: UnicodeDecodeError" in rows["c"]["error"]
    assert rows["d"]["error"] is None and "00001.tar:huge.mp4: DataError" in rows["huge"]["error"]
    assert rows["e"]["error"] is None and "00002.tar: damaged tar" in rows["00002.tar:damaged"]["error"]
    assert "00002.tar:f.mp4: ReadError" in rows["f"]["error"]  # its header came before the cut, its bytes not
    assert "00001.tar: damaged tar" in rows["00001.tar:damaged"]["error"]  # the claim runs past the end
    assert summary["clips"] == 9 and summary["failed"] == 6
