"""Captioning and scoring stages: output schema, batching and order, the caption combination rule,
aesthetic heads, similarity scores, and resuming a run killed midway without duplicates.

The "real" models here are the real architectures (BLIP-2 with an OPT decoder, T5, open_clip ViT,
ViCLIP) at tiny sizes with RANDOM weights, built from configs and saved to local directories, so the
loading code runs as it does on real checkpoints; their captions and scores are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from viclip.curation.captioning import (
    CaptionConfig,
    Captioner,
    ModelSpec,
    fine_frame_count,
    run_captioning,
    summary_input,
)
from viclip.curation.quality import AestheticHead, Scorer, clip_preprocess, run_scoring
from viclip.curation.stage_configs import ScoreConfig
from viclip.curation.stages import TableShard
from viclip.curation.table import read_tables, rows_to_table, write_table
from viclip.data.tars import ShardWriter
from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video, write_mp4

DURATIONS = (1.0, 2.5, 3.0, 2.0)


def make_stage(root: Path, shards: int = 2) -> Path:
    """A finished split stage: per shard a tar of clips, a clip table (with dropped, failed and corrupt rows), stats."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        rows = [{"video_id": f"gone{s}", "clip_id": f"gone{s}_0", "status": "failed", "error": "boom", "shard": s}]
        with ShardWriter(root, max_samples=1000, max_bytes=1 << 40, start_shard=s) as writer:
            for c, duration in enumerate(DURATIONS):
                t = np.arange(int(duration * 8))[:, None, None, None]
                colour = np.array([40 * c + 30 * s, 200 - 40 * c, 100], dtype=np.int64)
                frames = np.clip(colour + 6 * t + np.zeros((1, 32, 32, 3), dtype=np.int64), 0, 255).astype(np.uint8)
                data = b"not an mp4 at all" if (s, c) == (1, 2) else write_mp4(frames, fps=8.0)
                key = writer.write(data, "", {})
                rows.append({"video_id": f"v{s}_{c // 2}", "clip_id": f"v{s}_{c}", "status": "kept", "shard": s,
                             "start": 0.0, "end": duration, "duration": duration, "clip_tar": f"{s:05d}.tar",
                             "clip_key": key, "caption": "released caption"})
        rows.insert(2, {"video_id": f"v{s}_0", "clip_id": f"v{s}_x", "status": "dropped", "reason": "still",
                        "shard": s})
        write_table(rows_to_table(rows), root / f"{s:05d}.parquet")
        (root / f"{s:05d}.stats.json").write_text(json.dumps({"shard": s}))
    return root


class StubCaptioner:
    """Deterministic stand-ins: a caption from the image's mean colour, a summary that shows its input."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls, self.fail_on_call = 0, fail_on_call

    def image(self, images):
        return [f"mean {int(np.asarray(im).mean())}" for im in images]

    def summarise(self, texts):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("killed")
        return [f"S[{t}]" for t in texts]

    def stage(self, cfg: CaptionConfig) -> Captioner:
        return Captioner(cfg, self.image, None, self.summarise)


def _rows(path) -> dict[str, dict]:
    return {r["clip_id"]: r for r in read_tables([path]).to_pylist()}


def test_caption_columns_follow_the_multiscale_rule(tmp_path):
    stage = make_stage(tmp_path / "clips")
    cfg = CaptionConfig(workers=0, clips_per_batch=3)
    summary = run_captioning(stage, tmp_path / "cap", cfg, StubCaptioner().stage(cfg), progress=False)
    assert (summary.shards, summary.done, summary.kept, summary.failed) == (2, 2, 8, 1)
    rows = _rows(tmp_path / "cap")
    assert len(rows) == 2 * (len(DURATIONS) + 2)
    for cid, r in rows.items():
        if r["status"] != "kept" or cid == "v1_2":
            assert r["caption_coarse"] is None and r["frame_captions"] is None
            continue
        assert len(r["frame_captions"]) == fine_frame_count(r["duration"], 1.0, 16)
        assert r["caption_coarse"].startswith("mean ")
        assert r["caption_fine"] == f"S[{summary_input(r['frame_captions'])}]"
        assert r["caption"] == f"S[{summary_input([r['caption_coarse'], *r['frame_captions']])}]"
    corrupt = rows["v1_2"]
    assert "00001000002" in corrupt["error"] and corrupt["caption"] == "released caption"
    assert (corrupt["status"], corrupt["reason"]) == ("dropped", "undecodable")  # later stages skip it
    assert rows["v0_x"]["caption"] is None and rows["gone0_0"]["error"] == "boom"
    # clips differ in colour, so a mixed-up order would show
    assert len({r["caption_coarse"] for r in rows.values() if r["caption_coarse"]}) >= 6
    assert json.loads((tmp_path / "cap" / "00001.stats.json").read_text())["failed"] == 1
    assert summary_input(["a dog.", "a dog", "", "a cat"]) == "a dog. a cat"


def test_caption_run_killed_midway_resumes_without_duplicates(tmp_path):
    stage = make_stage(tmp_path / "clips")
    cfg = CaptionConfig(workers=0, clips_per_batch=2)
    clean = run_captioning(stage, tmp_path / "clean", cfg, StubCaptioner().stage(cfg), progress=False)
    assert clean.done == 2

    killer = StubCaptioner(fail_on_call=3)  # two summariser calls per shard: dies inside shard 1
    with pytest.raises(RuntimeError, match="killed"):
        run_captioning(stage, tmp_path / "cap", cfg, killer.stage(cfg), progress=False)
    assert (tmp_path / "cap" / "00000.stats.json").exists() and not (tmp_path / "cap" / "00001.stats.json").exists()
    (tmp_path / "cap" / ".00001.parquet.tmp4242").write_bytes(b"half a table")  # as a kill inside the write leaves

    resumed = StubCaptioner()
    summary = run_captioning(stage, tmp_path / "cap", cfg, resumed.stage(cfg), progress=False)
    assert (summary.skipped, summary.done) == (1, 1) and resumed.calls == 2  # only shard 1 was redone
    assert not list((tmp_path / "cap").glob(".*tmp*"))
    got = read_tables([tmp_path / "cap"])
    ids = got.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12
    assert got.to_pylist() == read_tables([tmp_path / "clean"]).to_pylist()

    with pytest.raises(ValueError, match="different config"):
        run_captioning(stage, tmp_path / "cap", CaptionConfig(workers=0, fine_fps=2.0), resumed.stage(cfg),
                       progress=False)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a man woman dog cat is on in the with red blue green car street room playing walking guitar ball"
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "<s>", *words.split()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>")


def _widen_init(model: torch.nn.Module) -> None:
    """Random weights large enough that different inputs give different greedy outputs."""
    torch.manual_seed(0)
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.5)


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random BLIP-2 (ViT + Q-Former + OPT) and T5 saved with their processor/tokenizer."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("hf")
    tokenizer = _tiny_tokenizer()
    processor = Blip2Processor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer, num_query_tokens=4)
    vocab = len(tokenizer)  # includes the <image> token the processor adds
    blip = Blip2ForConditionalGeneration(Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32, "vocab_size": vocab},
        text_config={"model_type": "opt", "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 1,
                     "ffn_dim": 64, "num_attention_heads": 2, "word_embed_proj_dim": 32, "max_position_embeddings": 64,
                     "pad_token_id": 0, "bos_token_id": 3, "eos_token_id": 1},
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>")))
    _widen_init(blip)
    blip.save_pretrained(root / "blip2")
    processor.save_pretrained(root / "blip2")
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                             num_decoder_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1,
                                             decoder_start_token_id=0))
    _widen_init(t5)
    t5.save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    return root / "blip2", root / "t5"


def test_hf_captioner_and_summariser_batch_in_order(tmp_path, tiny_hf_models):
    blip, t5 = tiny_hf_models
    stage = make_stage(tmp_path / "clips", shards=1)
    shard = TableShard(0, pq.read_table(stage / "00000.parquet"), stage)

    def run(clips: int, images: int, texts: int):
        cfg = CaptionConfig(coarse=ModelSpec("hf", str(blip), max_new_tokens=5),
                            summariser=ModelSpec("hf", str(t5), prompt="summarize: ", max_new_tokens=6, num_beams=2),
                            device="cpu", workers=0, clips_per_batch=clips, images_per_batch=images,
                            texts_per_batch=texts)
        return Captioner.from_config(cfg)(shard)

    one_by_one, stats = run(1, 1, 1)
    batched, _ = run(3, 5, 3)
    assert stats["captioned"] == 4 and stats["frames_captioned"] == 1 + 2 + 3 + 2
    assert batched.to_pylist() == one_by_one.to_pylist()
    coarse = [c for c in one_by_one.column("caption_coarse").to_pylist() if c is not None]
    assert len(coarse) == 4 and all(coarse) and len(set(coarse)) > 1
    kept = [r for r in one_by_one.to_pylist() if r["status"] == "kept"]
    assert all(isinstance(r["caption"], str) and isinstance(r["caption_fine"], str) for r in kept)


def _v2_state_dict(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (1024, dim), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    sd = {}
    for i, (o, n) in shapes.items():
        sd[f"layers.{i}.weight"] = torch.randn(o, n, generator=g) / n ** 0.5
        sd[f"layers.{i}.bias"] = torch.randn(o, generator=g)
    return sd


def test_aesthetic_heads_load_v1_and_v2_layouts():
    feats = torch.randn(5, 24)
    unit = feats / feats.norm(dim=-1, keepdim=True)
    v1 = {"weight": torch.randn(1, 24), "bias": torch.randn(1)}
    head = AestheticHead(v1)
    assert head.version == "v1"
    torch.testing.assert_close(head(feats), (unit @ v1["weight"].T + v1["bias"]).squeeze(-1))
    v2 = _v2_state_dict(24)
    head = AestheticHead({"state_dict": v2})
    x = unit
    for i in (0, 2, 4, 6, 7):  # linear layers only: the released MLP has no activations
        x = x @ v2[f"layers.{i}.weight"].T + v2[f"layers.{i}.bias"]
    assert head.version == "v2"
    torch.testing.assert_close(head(feats), x.squeeze(-1))
    with pytest.raises(KeyError, match="not a LAION aesthetic head"):
        AestheticHead({"fc.weight": torch.zeros(1, 2)})


@pytest.fixture(scope="module")
def tiny_scorers(tmp_path_factory) -> dict[str, Path | str]:
    """A tiny open_clip ViT (registered config, random weights), a V2 head for its features, a tiny ViCLIP."""
    import open_clip

    import viclip
    from viclip.model.weights import export_safetensors

    root = tmp_path_factory.mktemp("scorers")
    (root / "viclip-test-tiny-clip.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(root / "viclip-test-tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("viclip-test-tiny-clip").state_dict(), root / "clip.pt")
    torch.save(_v2_state_dict(16), root / "head.pth")
    export_safetensors(viclip.create_model("tiny", num_frames=4), root / "viclip.safetensors")
    return {"clip_model": "viclip-test-tiny-clip", "clip_weights": root / "clip.pt", "head": root / "head.pth",
            "viclip": root / "viclip.safetensors"}


def _clip_bytes(stage: Path, key: str) -> bytes:
    import tarfile

    with tarfile.open(stage / f"{key[:5]}.tar") as tar:
        return tar.extractfile(f"{key}.mp4").read()


def test_scores_follow_their_definitions_and_chain_after_captioning(tmp_path, tiny_scorers):
    stage = make_stage(tmp_path / "clips", shards=1)
    ccfg = CaptionConfig(workers=0)
    run_captioning(stage, tmp_path / "cap", ccfg, StubCaptioner().stage(ccfg), progress=False)
    cfg = ScoreConfig(clip_model=tiny_scorers["clip_model"], clip_weights=str(tiny_scorers["clip_weights"]),
                      aesthetic_head=str(tiny_scorers["head"]), similarity="viclip",
                      viclip_checkpoint=str(tiny_scorers["viclip"]), device="cpu", workers=0, clips_per_batch=3)
    scorer = Scorer.from_config(cfg)
    summary = run_scoring(tmp_path / "cap", tmp_path / "score", cfg, scorer, progress=False)  # tars found via cap
    assert summary.done == 1 and summary.kept == 4
    rows = _rows(tmp_path / "score")
    r = rows["v0_1"]
    assert len(r["aesthetic_frames"]) == 4 and r["aesthetic"] == pytest.approx(max(r["aesthetic_frames"]))
    assert r["clip_text_model"] == "viclip:viclip.safetensors" and -1 <= r["clip_text_sim"] <= 1
    assert r["caption"].startswith("S[")  # the caption stage's caption is the one scored
    assert rows["v0_x"]["aesthetic"] is None and rows["v0_x"]["clip_text_sim"] is None

    data = _clip_bytes(stage, r["clip_key"])
    with torch.no_grad():
        frames = read_video(data, num_frames=4, sampling="middle", size=256)
        pre = scorer.clip.visual.preprocess_cfg
        feats = scorer.clip.encode_image(clip_preprocess(frames, 32, pre["mean"], pre["std"]))
        np.testing.assert_allclose(r["aesthetic_frames"], scorer.head(feats).numpy(), rtol=1e-4, atol=1e-5)
        video = VideoTransform(train=False, image_size=32)(read_video(data, num_frames=4, sampling="middle", size=256))
        v = scorer.viclip.encode_video(video[None])
        import viclip
        t = scorer.viclip.encode_text(viclip.tokenize([r["caption"]]))
        expected = torch.nn.functional.cosine_similarity(v, t).item()
    assert r["clip_text_sim"] == pytest.approx(expected, abs=1e-4)

    # frame-averaged CLIP as the similarity model, no aesthetic head
    cfg_clip = ScoreConfig(clip_model=tiny_scorers["clip_model"], clip_weights=str(tiny_scorers["clip_weights"]),
                           similarity="clip", device="cpu", workers=0)
    run_scoring(tmp_path / "cap", tmp_path / "score_clip", cfg_clip, progress=False)
    r2 = _rows(tmp_path / "score_clip")["v0_1"]
    assert r2["clip_text_model"] == "open_clip:viclip-test-tiny-clip:clip.pt:avg4"
    with torch.no_grad():
        unit = torch.nn.functional.normalize(feats, dim=-1).mean(0, keepdim=True)
        import open_clip
        text = scorer.clip.encode_text(open_clip.get_tokenizer(tiny_scorers["clip_model"])([r["caption"]]))
        expected = torch.nn.functional.cosine_similarity(unit, text).item()
    assert r2["clip_text_sim"] == pytest.approx(expected, abs=1e-4)
    assert r2["aesthetic"] is None and "aesthetic_frames" not in r2


def test_score_run_killed_midway_resumes_without_duplicates(tmp_path, tiny_scorers):
    stage = make_stage(tmp_path / "clips", shards=3)
    cfg = ScoreConfig(clip_model=tiny_scorers["clip_model"], clip_weights=str(tiny_scorers["clip_weights"]),
                      aesthetic_head=str(tiny_scorers["head"]), similarity="clip", device="cpu", workers=0)
    scorer = Scorer.from_config(cfg)
    calls = []

    def dies_on_third_shard(shard):
        calls.append(shard.shard)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as SIGINT / a scheduler's kill would stop it
        return scorer(shard)

    with pytest.raises(KeyboardInterrupt):
        run_scoring(stage, tmp_path / "score", cfg, dies_on_third_shard, progress=False)
    calls.clear()
    summary = run_scoring(stage, tmp_path / "score", cfg, dies_on_third_shard, progress=False)
    assert calls == [2] and (summary.skipped, summary.done) == (2, 1)
    ids = read_tables([tmp_path / "score"]).column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == 3 * (len(DURATIONS) + 2)
    clean = run_scoring(stage, tmp_path / "clean", cfg, scorer, progress=False)
    assert clean.done == 3
    assert read_tables([tmp_path / "score"]).to_pylist() == read_tables([tmp_path / "clean"]).to_pylist()


def _run_tool(monkeypatch, module: str, *argv: str) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / f"{module}.py"
    spec = importlib.util.spec_from_file_location(module, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr("sys.argv", [str(path), *map(str, argv)])
    tool.main()


def test_tools_chain_split_caption_score_subset_icl(tmp_path, monkeypatch, tiny_hf_models, tiny_scorers):
    blip, t5 = tiny_hf_models
    stage = make_stage(tmp_path / "clips")
    common = ("--device", "cpu", "--workers", "0", "--no-progress")
    _run_tool(monkeypatch, "caption_clips", "--input", stage, "--out", tmp_path / "cap", "--coarse-path", blip,
              "--summariser-path", t5, "--coarse-max-new-tokens", "4", "--summariser-max-new-tokens", "4", *common)
    _run_tool(monkeypatch, "score_clips", "--input", tmp_path / "cap", "--out", tmp_path / "score",
              "--clip-model", tiny_scorers["clip_model"], "--clip-weights", tiny_scorers["clip_weights"],
              "--aesthetic-head", tiny_scorers["head"], "--similarity", "clip", *common)
    scored = read_tables([tmp_path / "score"])
    kept = [r for r in scored.to_pylist() if r["aesthetic"] is not None]
    assert len(kept) == 7 and all(r["caption_coarse"] is not None and r["clip_text_sim"] is not None for r in kept)
    _run_tool(monkeypatch, "build_subset", "--input", tmp_path / "score", "--rule", "aes", "--aesthetic-threshold=-1e9",
              "--out", tmp_path / "aes.parquet")
    assert pq.read_table(tmp_path / "aes.parquet").num_rows == 7
    _run_tool(monkeypatch, "make_icl", "--input", tmp_path / "score", "--out", tmp_path / "icl.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "icl.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == {"v0_0", "v0_1", "v1_0"}  # v1_1 lost its corrupt clip: one clip is too few
    videos = [i for x in lines for i in x["sequence"] if i["type"] == "video"]
    assert all(Path(v["tar"]).parent == stage.resolve() for v in videos)
