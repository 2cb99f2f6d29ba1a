"""Frame sampling rules, decoding against the encoded frames, and the clip transforms."""

import io

import av
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

import viclip
from viclip.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, VideoTransform
from viclip.data.video import VideoDecodeError, read_video, sample_indices, write_mp4


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
        T.Resize((32, 32), interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.Lambda(lambda x: x.float().div(255.0)),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])(clip.permute(0, 3, 1, 2).contiguous())
    assert ours.shape == (4, 3, 32, 32)
    assert torch.allclose(ours, official, atol=0.02)  # uint8 kernels may round 1 level differently


def test_readme_entry_point_is_the_transform_class():
    clip = torch.from_numpy(_moving_square(t=4))
    assert viclip.video_transform is VideoTransform  # README: viclip.video_transform(train=False)(frames)
    assert viclip.video_transform(train=False, image_size=32)(clip).shape == (4, 3, 32, 32)
    clip_norm = VideoTransform(False, image_size=32, mean="clip")(clip)
    ref = T.Normalize(CLIP_MEAN, CLIP_STD)(
        T.Resize((32, 32), interpolation=InterpolationMode.BICUBIC)(clip.permute(0, 3, 1, 2)).float() / 255)
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
