"""The training stream: shard lists and sizes, exact batch counts with bad shards, weights, resume, errors."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from viclip.data.corpora import as_corpora, corpus_num_samples
from viclip.data.stream import StreamConfig, build_train_loader
from viclip.data.tars import ShardWriter, expand_shards, stable_hash64
from viclip.data.transforms import VideoTransform
from viclip.data.video import write_mp4
from viclip.errors import ConfigError, DataError

T, S = 4, 32  # tiny clips: 4 frames of 32x32 decode in about a millisecond


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    """Stands in for viclip.tokenize: the stream only needs a callable returning [B, L] ids."""
    out = torch.zeros(len(texts), 32, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [ord(c) % 1000 for c in t[:32]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def clip_bytes(seed: int) -> bytes:
    frames = np.random.default_rng(seed).integers(0, 255, (T, S, S, 3), dtype=np.uint8)
    return write_mp4(frames, fps=4)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_corpus(root: Path, n_shards: int, per_shard: int, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with ShardWriter(root, max_samples=per_shard) as w:
        for i in range(n_shards * per_shard):
            w.write(clip_bytes(seed * 1000 + i), f"clip {seed} {i}", {"video_id": f"src{seed}-{i // 2}"})
    return root


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    """3 shards for 2 ranks x 2 workers: one good, one empty, one with a corrupt video, a sample
    without caption and a truncated end."""
    root = tmp_path_factory.mktemp("bad")
    good = [(f"00000{i:06d}.{ext}", data) for i in range(8) for ext, data in
            (("mp4", clip_bytes(i)), ("txt", f"good {i}".encode()), ("json", b'{"video_id": "g"}'))]
    write_tar(root / "00000.tar", good)
    write_tar(root / "00001.tar", [])
    mixed = [(f"00002{i:06d}.{ext}", data) for i in range(5) for ext, data in
             (("mp4", clip_bytes(100 + i)), ("txt", f"mixed {i}".encode()))]
    mixed += [("00002000005.mp4", b"\x00corrupt" * 64), ("00002000005.txt", b"broken video"),
              ("00002000006.mp4", clip_bytes(7)), ("00002000006.json", b'{"video_id": "no caption"}')]
    write_tar(root / "00002.tar", mixed + [("00002000007.mp4", clip_bytes(8))])
    with tarfile.open(root / "00002.tar") as tar:
        last = tar.getmembers()[-1]
    with open(root / "00002.tar", "r+b") as f:  # cut the tar in the middle of its last member
        f.truncate(last.offset_data + last.size // 2)
    (root / "sizes.json").write_text(json.dumps({"00000.tar": 8, "00001.tar": 0, "00002.tar": 8}))
    return root


def loader_for(shards, num_workers=0, rank=0, world_size=1, batch_size=4, transform=None, **kw):
    config = StreamConfig(shards, batch_size, num_frames=T, num_workers=num_workers, shuffle_buffer=kw.pop("buffer", 4),
                          **kw)
    return build_train_loader(config, fake_tokenize, transform or VideoTransform(True, image_size=16), rank, world_size)


def test_shard_lists_and_sizes(tmp_path, bad_corpus):
    assert expand_shards("d/{00000..00002}.tar::e/x.tar") == ["d/00000.tar", "d/00001.tar", "d/00002.tar", "e/x.tar"]
    assert expand_shards(bad_corpus) == [str(bad_corpus / f"0000{i}.tar") for i in range(3)]
    [corpus] = as_corpora({"bad": {"shards": f"{bad_corpus}/{{00000..00002}}.tar", "weight": 2.0}})
    assert corpus.name == "bad" and corpus.weight == 2.0
    assert corpus_num_samples(corpus, expand_shards(corpus.shards)) == 16
    (tmp_path / "a.tar").write_bytes(b"")
    [nosizes] = as_corpora(str(tmp_path / "a.tar"))
    with pytest.raises(ValueError, match="num_samples"):
        corpus_num_samples(nosizes, expand_shards(nosizes.shards))


def test_batch_contents(tmp_path):
    root = make_corpus(tmp_path / "c", n_shards=2, per_shard=6)
    loader = loader_for(root, batch_size=4, transform=VideoTransform(False, image_size=16))
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert b["video"].shape == (4, T, 3, 16, 16) and b["video"].dtype == torch.float32
    assert torch.equal(b["text"], fake_tokenize(b["caption"]))
    for key, caption, vid, index in zip(b["key"], b["caption"], b["video_id"], b["index"]):
        shard, i = int(key[-11:-6]), int(key[-6:])
        n = shard * 6 + i
        assert caption == f"clip 0 {n}" and int(index) == stable_hash64(key) & (2**63 - 1)  # key: shard:member
        assert int(vid) == stable_hash64(f"src0-{n // 2}")  # the json's source video id, hashed
    assert b["video_id"].dtype == torch.int64 and b["index"].dtype == torch.int64
    # the training setting: uint8 batches (a quarter of the bytes), normalised by the loader afterwards
    raw = loader_for(root, batch_size=4, transform=VideoTransform(False, image_size=16, normalize=False))
    for ours, ref in zip(raw, batches, strict=True):
        assert ours["video"].dtype == torch.uint8 and ours["key"] == ref["key"]
        assert torch.equal(raw.normalize(ours["video"]), ref["video"]) and raw.normalize(ours["video"]).is_contiguous()
    assert raw.normalize(b["video"], torch.bfloat16).dtype == torch.bfloat16  # float batches: a cast


def _epoch(loader, videos: dict | None = None) -> list[tuple[str, ...]]:
    keys = []
    for b in loader:
        keys.append(tuple(b["key"]))
        if videos is not None:
            videos[keys[-1]] = b["video"]
    return keys


@pytest.mark.parametrize("num_workers", [0, 1])
def test_exact_batches_per_rank_with_bad_shards_in_process(bad_corpus, num_workers):
    for rank in range(2):
        loader = loader_for(bad_corpus, num_workers, rank=rank, world_size=2, epoch_samples=48)
        assert len(loader) == 6
        assert len(_epoch(loader)) == 6
        assert loader.epoch == 1


def _rank_main(rank: int, init_file: str, shards: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    loader = loader_for(shards, num_workers=2, rank=None, world_size=None, epoch_samples=64)  # from dist
    counts = []
    for _ in range(2):
        n = 0
        for batch in loader:
            n += 1
            dist.all_reduce(batch["video"].mean().reshape(1))  # a collective per step: a short rank would hang
        counts.append(n)
    torch.save({"counts": counts, "len": len(loader), "skips": loader.skip_counts(),
                "shard_skips": {k: dict(v) for k, v in loader.shard_skips.items()}}, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_exact_batches_on_two_gloo_ranks_with_two_workers(tmp_path, bad_corpus):
    out = str(tmp_path / "res")
    # fork: the ranks inherit the imported modules instead of importing torch again
    mp.start_processes(_rank_main, args=(str(tmp_path / "init"), str(bad_corpus), out), nprocs=2,
                       start_method="fork")
    results = [torch.load(f"{out}.{r}") for r in range(2)]
    for r in results:
        assert r["len"] == 8 and r["counts"] == [8, 8]  # 64 samples / (4 x 2 ranks), both epochs
    skips = Counter()
    for r in results:
        skips.update(r["skips"])
    assert skips["undecodable"] > 0 and skips["missing_caption"] > 0 and skips["corrupt_shard"] > 0
    bad_shard = str(bad_corpus / "00002.tar")
    assert set().union(*(r["shard_skips"] for r in results)) == {bad_shard}


def test_mixed_corpora_follow_their_weights(tmp_path):
    a = make_corpus(tmp_path / "a", n_shards=2, per_shard=5, seed=1)
    b = make_corpus(tmp_path / "b", n_shards=1, per_shard=5, seed=2)
    loader = loader_for([{"shards": str(a), "weight": 3.0}, {"shards": str(b), "weight": 1.0}],
                        batch_size=8, epoch_samples=400, transform=lambda x, generator=None: x[:, :8, :8])
    corpus = torch.cat([batch["corpus"] for batch in loader])
    assert len(corpus) == 400
    share = (corpus == 0).float().mean().item()
    assert 0.69 < share < 0.81, share  # 0.75 expected; binomial sd 0.022


def test_restart_at_step_gives_the_rest_of_the_epoch_without_repeats(tmp_path):
    root = make_corpus(tmp_path / "c", n_shards=3, per_shard=6)
    full_loader = loader_for(root, num_workers=2, batch_size=3, epoch_samples=36)
    full_videos: dict = {}
    full = _epoch(full_loader, full_videos)
    assert len(full) == 12
    first = loader_for(root, num_workers=2, batch_size=3, epoch_samples=36)
    it = iter(first)
    part1 = [tuple(next(it)["key"]) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    assert (state["epoch"], state["step"]) == (0, 5)
    resumed = loader_for(root, num_workers=2, batch_size=3, epoch_samples=36)
    resumed.load_state_dict(state)
    videos: dict = {}
    part2 = _epoch(resumed, videos)
    assert len(part2) == 7 and resumed.epoch == 1
    assert all(torch.equal(v, full_videos[k]) for k, v in videos.items())  # same frames and crops
    assert not set(part1) & set(part2)
    assert Counter(part1 + part2) == Counter(full)  # exactly the batches of the uninterrupted epoch
    assert _epoch(resumed) != full  # the next epoch has its own order


def test_resume_refuses_other_data_settings(tmp_path):
    root = make_corpus(tmp_path / "c", n_shards=1, per_shard=8)
    state = loader_for(root, batch_size=2).state_dict()
    with pytest.raises(ConfigError, match="batch_size"):
        loader_for(root, batch_size=4).load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "min_caption_words"}  # a state saved before the caption rule
    with pytest.raises(ConfigError, match="min_caption_words was 1 and is now 2"):
        loader_for(root, batch_size=2).load_state_dict(old)
    loader_for(root, batch_size=2, min_caption_words=1).load_state_dict(old)  # resumes exactly as it ran


def test_unusable_corpus_raises_instead_of_hanging(tmp_path):
    write_tar(tmp_path / "00000.tar", [(f"{i:011d}.mp4", b"junk" * 50) for i in range(6)]
              + [(f"{i:011d}.txt", b"c") for i in range(6)])
    (tmp_path / "sizes.json").write_text('{"00000.tar": 6}')
    with pytest.raises(DataError, match="in a row were unusable"):
        list(loader_for(tmp_path, batch_size=2, max_consecutive_skips=10))
    (tmp_path / "00000.tar").write_bytes(b"\x01" * 4096)  # not a tar, but large enough for its 6 samples
    for workers in (0, 1):  # raised in a worker process too: one line naming the corpus and the shard
        with pytest.raises(DataError, match=r"^corpus corpus0: none of its 1 shards holds a readable sample \(last "
                                            rf"read: {tmp_path}/00000.tar\)$"):
            list(loader_for(tmp_path, num_workers=workers, batch_size=2))


@pytest.mark.parametrize("pattern", ["{a}::{b}", "{a}/{{00000..00000}}.tar::{b}/{{00000..00000}}.tar"])
def test_clips_of_two_shard_directories_have_distinct_indices(tmp_path, pattern):
    # each directory written by its own make_shards run: both start at key 00000000000
    a = make_corpus(tmp_path / "a", n_shards=1, per_shard=4, seed=1)
    b = make_corpus(tmp_path / "b", n_shards=1, per_shard=4, seed=2)
    loader = loader_for(pattern.format(a=a, b=b), batch_size=8, buffer=8, epoch_samples=32)
    pairs = {(k, int(i)) for batch in loader for k, i in zip(batch["key"], batch["index"])}
    keys = {k for k, _ in pairs}
    assert {k.rsplit(":", 1)[1] for k in keys if k.startswith(str(a))} & {k.rsplit(":", 1)[1] for k in keys
                                                                        if k.startswith(str(b))}  # same member keys
    # one index per clip, and distinct clips never share one (the loss takes equal indices as positives)
    assert len(pairs) == len(keys) == len({i for _, i in pairs})


def test_bad_json_oversized_member_and_short_captions_are_skipped_and_counted(tmp_path):
    bad = [("00000000006.mp4", clip_bytes(6)), ("00000000006.txt", b"listed json"),
           ("00000000006.json", b'["a", "list"]'),
           ("00000000007.mp4", clip_bytes(7)), ("00000000007.txt", b"Hello!"),  # one word after cleaning
           ("00000000008.txt", b"a terabyte claimed")]
    good = [(f"00000{i:06d}.{ext}", data) for i in range(6) for ext, data in
            (("mp4", clip_bytes(i)), ("txt", f"good clip {i}".encode()))]
    with tarfile.open(tmp_path / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in bad:
            _add(tar, name, data)
        header = _sparse_header("00000000008.mp4", 1 << 40)  # a GNU sparse member claiming 1 TiB, no data
        tar.fileobj.write(header)
        tar.offset += len(header)
        for name, data in good:
            _add(tar, name, data)
    (tmp_path / "sizes.json").write_text('{"00000.tar": 9}')
    loader = loader_for(tmp_path, batch_size=3, epoch_samples=6, buffer=1)
    batches = list(loader)
    assert sorted(c for b in batches for c in b["caption"]) == [f"good clip {i}" for i in range(6)]
    skips = loader.skip_counts()
    assert skips["bad_json"] == 1 and skips["short_caption"] == 1 and skips["oversized_member"] == 1
    keep_one_word = loader_for(tmp_path, batch_size=7, epoch_samples=7, buffer=1, min_caption_words=1)
    assert "Hello!" in next(iter(keep_one_word))["caption"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sparse_header(name: str, claimed: int) -> bytes:
    """A GNU sparse member header: one empty data segment, expanding to ``claimed`` bytes when read."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[386:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT) * 2
    buf[483:495] = tarfile.itn(claimed, 12, tarfile.GNU_FORMAT)  # the real size
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


@pytest.mark.parametrize(("sizes", "message"), [
    ('{"00000.tar": "8"}', "'00000.tar' has '8' samples"),
    ('{"00000.tar": 2.5}', "'00000.tar' has 2.5 samples"),
    ('["00000.tar"]', "got a JSON list"),
    ('{"00000.tar": 64}', "00000.tar has 64 samples, but"),
])
def test_bad_sizes_json_is_one_line_naming_file_and_value(tmp_path, sizes, message):
    write_tar(tmp_path / "00000.tar", [])
    (tmp_path / "sizes.json").write_text(sizes)
    with pytest.raises(DataError, match="sizes.json") as e:
        loader_for(tmp_path, batch_size=2)
    assert message in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_sample_count_comes_from_sizes_json_and_a_distant_configured_count_is_refused(tmp_path, caplog):
    root = make_corpus(tmp_path / "c", n_shards=2, per_shard=6)
    for configured in (None, 12):
        [corpus] = as_corpora({"mine": {"shards": str(root), "num_samples": configured}})
        assert corpus_num_samples(corpus, expand_shards(root)) == 12
    with pytest.raises(ConfigError, match=r"count 12 samples but data.sources.mine.num_samples=10647458"):
        loader_for({"mine": {"shards": str(root), "num_samples": 10647458}})
    big = tmp_path / "big"  # counted, not read: a tar-sized file is enough
    big.mkdir()
    (big / "00000.tar").write_bytes(b"\0" * 1000 * 512)
    (big / "sizes.json").write_text('{"00000.tar": 1000}')
    [near] = as_corpora({"mine": {"shards": str(big), "num_samples": 1005}})
    with caplog.at_level("WARNING", logger="viclip.data.corpora"):
        assert corpus_num_samples(near, expand_shards(big)) == 1000  # within 1 %: the shards' count, and a warning
    assert "count 1000 samples but data.sources.mine.num_samples=1005" in caplog.text
