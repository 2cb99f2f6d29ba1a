"""Frame sampling rules, decoding against the encoded frames, and the clip transforms."""

import io
import os

import av
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

import viclip
from viclip.data.formats import VideoDecodeError
from viclip.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, VideoTransform
from viclip.data.video import read_video, sample_indices, write_mp4


# Hand-made cases of the released rule: segments at linspace(0, n, k+1).astype(int), middle = (a + b-1)//2.
@pytest.mark.parametrize("n, k, expected", [
    (80, 8, [4, 14, 24, 34, 44, 54, 64, 74]),
    (12, 8, [0, 1, 3, 4, 6, 7, 9, 10]),          # edges 0,1,3,4,6,7,9,10,12
    (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (5, 8, [0, 1, 2, 3, 4, 4, 4, 4]),             # short video: the last index repeats
    (1, 4, [0, 0, 0, 0]),
    (30, 4, [3, 10, 18, 25]),                      # edges 0,7,15,22,30
])
def test_middle_sampling_matches_official_rule(n, k, expected):
    assert sample_indices(n, k, "middle") == expected


def test_random_sampling_stays_inside_segments_and_skips_segment_ends():
    # n=30, k=4: segments [0,7) [7,15) [15,22) [22,30); the release draws from range(a, b-1).
    seen = [set() for _ in range(4)]
    rng = np.random.default_rng(0)
    for _ in range(400):
        for j, i in enumerate(sample_indices(30, 4, "random", rng)):
            seen[j].add(i)
    assert seen == [set(range(6)), set(range(7, 14)), set(range(15, 21)), set(range(22, 29))]
    assert sample_indices(30, 4, "rand", 3) == sample_indices(30, 4, "random", 3)  # seeded and aliased


def test_random_sampling_fallback_for_one_frame_segments_and_short_videos():
    rng = np.random.default_rng(1)
    for _ in range(50):
        idx = sample_indices(12, 8, "random", rng)  # segment [0,1) has one frame: sorted distinct draw
        assert idx == sorted(idx) and len(set(idx)) == 8 and max(idx) < 12
    assert sample_indices(5, 8, "random", rng) == [0, 1, 2, 3, 4, 4, 4, 4]


def test_sampling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sampling"):
        sample_indices(10, 4, "uniform")
    with pytest.raises(ValueError, match="0 frames"):
        sample_indices(0, 4)


try:  # the [gpu] extra; it needs FFmpeg's shared libraries, which `make test` installs where it can
    from torchcodec.decoders import VideoDecoder  # noqa: F401

    HAS_TORCHCODEC = True
except Exception:  # noqa: BLE001 - ImportError, or a RuntimeError when FFmpeg's libraries cannot be loaded
    HAS_TORCHCODEC = False
TORCHCODEC = pytest.param("torchcodec", marks=pytest.mark.skipif(
    not HAS_TORCHCODEC, reason="torchcodec or FFmpeg's shared libraries are not installed"))


def _moving_square(t=24, h=48, w=64):
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = 8 * i  # the frame number is readable from the red channel
        frames[i, 12:36, 2 * i:2 * i + 16, 1] = 220
    return frames


@pytest.mark.parametrize("backend", ["decord", "pyav", TORCHCODEC, "auto"])
@pytest.mark.parametrize("sampling", ["middle", "random"])
def test_decoded_frames_equal_encoded_frames(tmp_path, backend, sampling):
    frames = _moving_square()
    mp4 = write_mp4(frames, fps=8, crf=18)
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4)
    for src in (mp4, path, str(path)):
        out = read_video(src, num_frames=8, sampling=sampling, backend=backend, rng=7)
        idx = sample_indices(24, 8, sampling, 7)
        assert out.dtype == torch.uint8 and out.shape == (8, 48, 64, 3)
        err = np.abs(out.numpy().astype(int) - frames[idx].astype(int))
        assert err.mean() < 2.0, err.mean()  # codec error only; a wrong frame is off by >= 8 everywhere
        assert np.abs(out.numpy()[..., 0].astype(int).mean((1, 2)) - 8 * np.array(idx)).max() < 3


@pytest.mark.parametrize("container, codec", [("mpegts", "libx264"), ("mpeg", "mpeg2video"), ("matroska", "libx264"),
                                              ("avi", "mpeg4")])
def test_pyav_reads_containers_beyond_mp4(container, codec):
    """The reader cuts FFmpeg's stream probe short for speed; containers other than mp4 (MPEG-TS
    and PS find their streams in the packets) must still decode the right frames."""
    frames = _moving_square()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "18", "g": "4"} if codec == "libx264" else {"b": "2M", "g": "4"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    decoded = read_video(buf.getvalue(), num_frames=8, backend="pyav")
    idx = sample_indices(24, 8, "middle")
    assert np.abs(decoded.numpy()[..., 0].astype(int).mean((1, 2)) - 8 * np.array(idx)).max() < 3


@pytest.mark.parametrize("backend", ["decord", "pyav", TORCHCODEC])
def test_resize_on_decode(backend):
    mp4 = write_mp4(_moving_square())
    assert read_video(mp4, 4, size=32, backend=backend).shape == (4, 32, 43, 3)  # short side 32
    assert read_video(mp4, 4, size=(16, 20), backend=backend).shape == (4, 16, 20, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav", TORCHCODEC, "auto"])
def test_undecodable_video_names_the_source(tmp_path, backend):
    mp4 = write_mp4(_moving_square())
    for bad in (b"not a video" * 50, mp4[: len(mp4) // 2]):
        with pytest.raises(VideoDecodeError, match="shard-3.tar:0000300001"):
            read_video(bad, backend=backend, name="shard-3.tar:0000300001")
    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4", backend=backend)
    assert issubclass(VideoDecodeError, ValueError)


def test_eval_transform_matches_torchvision_official_pipeline():
    clip = torch.from_numpy(_moving_square(t=4))
    ours = VideoTransform(False, image_size=32)(clip)
    official = T.Compose([
        T.Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=False),  # torchvision 0.15's default
        T.Lambda(lambda x: x.float().div(255.0)),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])(clip.permute(0, 3, 1, 2).contiguous())
    assert ours.shape == (4, 3, 32, 32)
    assert torch.allclose(ours, official, atol=0.02)  # uint8 kernels may round 1 level differently


def test_antialias_switch_changes_the_resize():
    # Pixel noise shrunk 8x: a plain bicubic kernel samples it (aliasing), an antialiased resize averages it to grey.
    stripes = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8))
    plain = VideoTransform(False, image_size=32)(stripes)
    smooth = VideoTransform(False, image_size=32, antialias=True)(stripes)
    ref = T.Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=True)(stripes.permute(0, 3, 1, 2))
    assert torch.allclose(smooth, VideoTransform(False, image_size=32).normalize(ref), atol=0.02)
    assert (plain - smooth).abs().mean() > 0.5  # normalised units: the two resizes disagree
    train = [VideoTransform(True, image_size=32, hflip=0, antialias=a)(stripes, torch.Generator().manual_seed(0))
             for a in (False, True)]
    assert (train[0] - train[1]).abs().mean() > 0.5


def test_readme_entry_point_is_the_transform_class():
    clip = torch.from_numpy(_moving_square(t=4))
    assert viclip.video_transform is VideoTransform  # README: viclip.video_transform(train=False)(frames)
    assert viclip.video_transform(train=False, image_size=32)(clip).shape == (4, 3, 32, 32)
    clip_norm = VideoTransform(False, image_size=32, mean="clip")(clip)
    ref = T.Normalize(CLIP_MEAN, CLIP_STD)(
        T.Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=False)(clip.permute(0, 3, 1, 2)).float()
        / 255)
    assert torch.allclose(clip_norm, ref, atol=0.02)


def test_train_transform_uses_one_crop_and_flip_per_clip():
    still = torch.from_numpy(np.repeat(_moving_square(t=1), 8, axis=0))  # 8 identical frames
    tf = VideoTransform(True, image_size=24)
    torch.manual_seed(0)
    outs = [tf(still) for _ in range(6)]
    for out in outs:
        assert out.shape == (8, 3, 24, 24)
        assert torch.equal(out, out[:1].expand_as(out))  # same crop and flip on every frame
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # but a new draw per clip
    batch = tf(still[None].repeat(3, 1, 1, 1, 1))
    assert batch.shape == (3, 8, 3, 24, 24)


def test_transform_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        VideoTransform(False)(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match="mean"):
        VideoTransform(False, mean="laion")


def test_transform_writes_into_a_given_tensor():
    clip = torch.from_numpy(_moving_square(t=4))
    tf = VideoTransform(True, image_size=16)
    out = torch.full((4, 3, 16, 16), float("nan"))
    result = tf(clip, generator=torch.Generator().manual_seed(5), out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(out, tf(clip, generator=torch.Generator().manual_seed(5)))  # seeded: same crop


def test_uint8_output_normalised_later_equals_the_float_transform():
    """The training stream's split (uint8 in the loader, normalize on the device) changes no value."""
    clip = torch.from_numpy(_moving_square(t=4))
    for train in (True, False):
        floats = VideoTransform(train, image_size=16)(clip, generator=torch.Generator().manual_seed(3))
        tf = VideoTransform(train, image_size=16, normalize=False)
        raw = tf(clip, generator=torch.Generator().manual_seed(3))
        assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 16, 16)
        assert torch.equal(tf.normalize(raw), floats)
        assert tf.normalize(raw[None], torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        tf.normalize(floats)


# -- GPU decoding (backend torchcodec_cuda): the CPU fallback here, NVDEC where a GPU is present --

GPU = pytest.mark.skipif(not torch.cuda.is_available(),
                         reason="no CUDA GPU on this machine: the torchcodec_cuda (NVDEC) tests run only where one is")


@pytest.fixture
def no_gpu(monkeypatch):
    """This process as a machine without a GPU sees it, also where one is present; the probe re-runs."""
    from viclip.data import video

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    video._gpu_decoding_problem.cache_clear()
    yield
    video._gpu_decoding_problem.cache_clear()


def test_gpu_backend_falls_back_to_the_cpu_with_one_warning(no_gpu, caplog):
    from viclip.data.video import decode_plan

    with caplog.at_level("WARNING", logger="viclip.data.video"):
        assert decode_plan("torchcodec_cuda", 3, True) == ("auto", 3, True)
    expected = ("backend=torchcodec_cuda: no CUDA device is visible; decoding on the CPU with backend=auto and "
                "3 workers instead")
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert decode_plan("pyav", 2, False) == ("pyav", 2, False)  # other backends pass through
    with pytest.raises(RuntimeError, match="torchcodec_cuda.*needs a CUDA GPU"):  # not a per-clip decode error
        read_video(write_mp4(_moving_square()), backend="torchcodec_cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU driver")
def test_gpu_backend_without_nvdec_names_torchcodecs_error(monkeypatch, caplog):
    """torch told a GPU is there, but no driver can decode: the real probe fails and the reason is logged."""
    from viclip.data import video

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    video._gpu_decoding_problem.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="viclip.data.video"):
            assert video.decode_plan("torchcodec_cuda", 0, False) == ("auto", 0, False)
    finally:
        video._gpu_decoding_problem.cache_clear()
    assert len(caplog.records) == 1
    assert "backend=torchcodec_cuda: torch" in caplog.records[0].getMessage()  # "torchcodec does not load" or
    assert "decoding on the CPU with backend=auto" in caplog.records[0].getMessage()  # "... cannot decode on the GPU"


def test_gpu_backend_in_a_stream_with_workers_is_refused():
    from viclip.data.stream import StreamConfig, VideoTextStream

    with pytest.raises(ValueError, match="num_workers must be 0"):
        VideoTextStream(StreamConfig("unused-{0..1}.tar", 2, num_workers=2, epoch_samples=4,
                                     backend="torchcodec_cuda"), lambda texts: torch.zeros(len(texts), 4))


def test_training_loader_runs_through_the_fallback(no_gpu, tmp_path, caplog):
    """train.loader.build_loader with data.backend=torchcodec_cuda on a machine without a GPU: CPU
    decoding with the configured workers, and the batches come out; data.augment.antialias reaches the
    transform (off by default, as the official resize)."""
    from hydra import compose, initialize_config_dir

    from viclip.data.tars import ShardWriter
    from viclip.model import get_config
    from viclip.train.loader import build_loader

    with ShardWriter(tmp_path, max_samples=4) as writer:
        for i in range(4):
            writer.write(write_mp4(np.roll(_moving_square(t=16), 3 * i, axis=2)), f"clip {i}", {"video_id": f"v{i}"})
    overrides = ["data=shards", f"data.shards={tmp_path}", "data.num_workers=1", "data.shuffle_buffer=2",
                 "data.backend=torchcodec_cuda", "train.batch_size=2"]
    configs = os.path.join(os.path.dirname(viclip.__file__), "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
        smooth = compose(config_name="train", overrides=[*overrides, "data.augment.antialias=true"])
    assert build_loader(smooth, get_config("tiny"), 2, 0, 1).stream.transform.antialias is True
    with caplog.at_level("WARNING", logger="viclip.data.video"):
        loader = build_loader(cfg, get_config("tiny"), int(cfg.train.batch_size), 0, 1)
    assert loader.stream.transform.antialias is False
    assert (loader.stream.config.backend, loader.stream.config.num_workers) == ("auto", 1)
    assert any("decoding on the CPU with backend=auto and 1 workers" in r.getMessage() for r in caplog.records)
    assert [tuple(b["video"].shape) for b in loader] == [(2, 8, 3, 32, 32)] * 2


def test_evaluation_embeds_through_the_fallback(no_gpu, tmp_path, caplog):
    """embed_videos with backend torchcodec_cuda on a machine without a GPU: the same embeddings as auto
    (random weights of the tiny model; the loader path is what is tested)."""
    from viclip.data.annotations import VideoText
    from viclip.eval.embed import embed_videos
    from viclip.eval.protocol import VideoProtocol

    records = []
    for i in range(3):
        path = tmp_path / f"{i}.mp4"
        path.write_bytes(write_mp4(np.roll(_moving_square(t=16), 5 * i, axis=2)))
        records.append(VideoText(str(path), (f"clip {i}",)))
    torch.manual_seed(0)
    model = viclip.create_model("tiny").eval()
    cpu = torch.device("cpu")
    expected, ok = embed_videos(model, records, VideoProtocol(image_size=32, backend="auto"), cpu, num_workers=0)
    with caplog.at_level("WARNING", logger="viclip.data.video"):
        got, ok_gpu = embed_videos(model, records, VideoProtocol(image_size=32, backend="torchcodec_cuda"), cpu,
                                   num_workers=0)
    assert ok.all() and ok_gpu.all() and torch.equal(got, expected)
    assert any("decoding on the CPU" in r.getMessage() for r in caplog.records)


@GPU
def test_gpu_decoding_gives_the_sampled_frames_on_the_device():
    """Grey frames (a white bar moving 4 pixels a frame), so the colour matrix NVDEC assumes for an
    untagged stream cannot matter: only the frame and the codec's error can."""
    from viclip.data.video import decode_plan

    assert decode_plan("torchcodec_cuda", 4, True) == ("torchcodec_cuda", 0, False), "NVDEC probe failed"
    frames = np.full((24, 128, 160, 3), 40, np.uint8)
    for i in range(24):
        frames[i, :, 4 * i:4 * i + 12] = 230
    mp4 = write_mp4(frames, fps=8, crf=18)
    for sampling in ("middle", "random"):
        out = read_video(mp4, 8, sampling, backend="torchcodec_cuda", rng=3)
        idx = sample_indices(24, 8, sampling, 3)
        assert out.is_cuda and out.dtype == torch.uint8 and out.shape == (8, 128, 160, 3)
        got = out.cpu().numpy().astype(int)
        assert np.abs(got - frames[idx].astype(int)).mean() < 3.0  # CPU decoders: ~0.9; a neighbouring frame: ~9.5
        columns = np.clip(got[..., 0].mean(1) - 40, 0, None)  # [T, W]: the bar's brightness by column
        centres = (columns * np.arange(160)).sum(1) / columns.sum(1)
        assert np.round((centres - 5.5) / 4).astype(int).tolist() == idx  # the bar's position names the frame
    assert read_video(mp4, 4, size=64, backend="torchcodec_cuda").shape == (4, 64, 80, 3)
    normalized = VideoTransform(False, image_size=32)(out)  # the float transform runs on the device too
    assert normalized.is_cuda and normalized.dtype == torch.float32 and normalized.shape == (8, 3, 32, 32)


@GPU
def test_gpu_decoded_training_batches_stay_on_the_gpu(tmp_path):
    from viclip.data.stream import StreamConfig, build_train_loader
    from viclip.data.tars import ShardWriter

    with ShardWriter(tmp_path, max_samples=8) as writer:
        for i in range(8):
            writer.write(write_mp4(np.roll(_moving_square(t=16, h=64, w=64), i, axis=2)), f"clip {i}",
                         {"video_id": f"v{i}"})
    config = StreamConfig(str(tmp_path), 4, epoch_samples=8, shuffle_buffer=2, backend="torchcodec_cuda")
    loader = build_train_loader(config, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long),
                                VideoTransform(True, image_size=32, normalize=False))
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["video"].is_cuda and batch["video"].shape == (4, 8, 3, 32, 32)


def test_frames_above_the_pixel_limit_are_scaled_down_before_rgb():
    # A 4096x4096 stream: read at full size, 4 RGB frames are 200 MB; the limit scales them in the decoder.
    import tracemalloc

    data = write_mp4(np.zeros((4, 4096, 4096, 3), np.uint8), fps=4, preset="ultrafast")
    tracemalloc.start()
    frames = read_video(data, num_frames=4, max_pixels=256 * 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert frames.shape == (4, 256, 256, 3)
    assert peak < 20e6, f"{peak / 1e6:.0f} MB of arrays while reading"
    assert read_video(data, num_frames=1, size=(64, 128), max_pixels=1024).shape == (1, 22, 45, 3)  # aspect kept
    assert read_video(data, num_frames=1, size=32).shape == (1, 32, 32, 3)  # within the default limit


def test_a_non_video_member_fails_in_one_line_without_decoder_logs(capfd):
    from viclip.errors import DataError

    text = b"not a video at all\n" * 200
    with pytest.raises(VideoDecodeError, match=r"shard\.tar:k1: pyav: not a video") as err:
        read_video(text, name="shard.tar:k1")
    assert isinstance(err.value, DataError)
    assert "not a video at all" not in capfd.readouterr().err


@pytest.mark.parametrize("backend", ["pyav", "decord", "torchcodec"])
def test_max_seconds_samples_only_the_first_seconds(tmp_path, backend):
    """DiDeMo's trimmed30: a 6 s video, dark for 2 s then bright; at max_seconds=2 every sampled frame is dark."""
    pytest.importorskip(backend if backend != "pyav" else "av")
    frames = np.full((48, 64, 64, 3), 230, np.uint8)
    frames[:16] = 20  # 8 fps: the first 2 s
    path = tmp_path / "v.mp4"
    path.write_bytes(write_mp4(frames, fps=8.0))
    for seed in range(5):
        first = read_video(path, 8, "random", backend=backend, rng=seed, max_seconds=2)
        assert first.shape[0] == 8 and first.float().mean() < 60, seed
    whole = read_video(path, 8, "middle", backend=backend)
    assert whole.float().mean(dim=(1, 2, 3)).max() > 180  # without it, the bright part is sampled
