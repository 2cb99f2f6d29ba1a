"""The masked patch embedding runs conv1 on the kept patches only, with the outputs, gradients and masking
draws of embedding every patch first and dropping afterwards (the path it replaced, restated here).

Random weights of the real architecture (tiny sizes, both tubelet sizes)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import viclip
from viclip.model.vision import VisionTransformer


def embed_all_then_drop(vit: VisionTransformer, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """The previous path: conv1 on every patch, positions added, then the argsort-of-noise draw and a gather."""
    if x.ndim == 4:
        x = x.unsqueeze(1).expand(-1, vit.tubelet_size, -1, -1, -1)
    x = vit.conv1(x.transpose(1, 2)).flatten(3).permute(0, 2, 3, 1)
    b, t, n, c = x.shape
    temporal = vit.temporal_positional_embedding
    if t == 1:
        temporal = temporal.mean(1, keepdim=True)
    x = (x + vit.positional_embedding[1:] + temporal.unsqueeze(2)).reshape(b, t * n, c)
    keep = t * n - int(mask_ratio * t * n)
    ids = torch.rand(b, t * n, device=x.device).argsort(dim=1)[:, :keep].sort(dim=1).values
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, c))


def tiny_vit(tubelet_size: int, dtype: torch.dtype) -> VisionTransformer:
    torch.manual_seed(0)
    vit = viclip.create_model("tiny", tubelet_size=tubelet_size, num_frames=4).vision_encoder.to(dtype)
    with torch.no_grad():  # the temporal embedding starts at zero: make it count
        vit.temporal_positional_embedding.normal_()
    return vit


@pytest.mark.parametrize("tubelet_size", [1, 2])
@pytest.mark.parametrize("mask_ratio", [0.5, 0.9])
def test_kept_patch_tokens_and_masking_draws_equal_the_embed_everything_path(tubelet_size, mask_ratio):
    vit = tiny_vit(tubelet_size, torch.float64)
    x = torch.randn(3, 4, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(1)
    ours = vit.embed(x, mask_ratio)
    after_ours = torch.rand(4)
    torch.manual_seed(1)
    reference = embed_all_then_drop(vit, x, mask_ratio)
    after_reference = torch.rand(4)
    assert ours.shape == reference.shape == (3, 64 // tubelet_size - int(mask_ratio * 64 // tubelet_size), 64)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    assert torch.equal(after_ours, after_reference), "the masking draws consume the RNG as before (exact resume)"


def test_images_take_the_masked_path_like_clips():
    vit = tiny_vit(2, torch.float64)
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(3)
    ours = vit.embed(image, 0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, embed_all_then_drop(vit, image, 0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_training_gradients_equal_the_embed_everything_path(dtype, atol):
    """Whole video tower forward + backward: every parameter's gradient and the pixels' gradient."""
    vit = tiny_vit(2, dtype)
    x = torch.randn(2, 4, 3, 32, 32, dtype=dtype)

    def grads(embed):
        vit.zero_grad()
        pixels = x.clone().requires_grad_(True)
        torch.manual_seed(2)
        tokens = embed(pixels)
        cls = (vit.class_embedding + vit.positional_embedding[0]).expand(len(x), 1, -1)
        out = vit.ln_post(vit.transformer(vit.ln_pre(torch.cat([cls, tokens], 1)))[:, 0]) @ vit.proj
        out.square().sum().backward()
        return out.detach(), pixels.grad, {k: p.grad.clone() for k, p in vit.named_parameters()}

    out, pixel_grad, ours = grads(lambda px: vit.embed(px, 0.75))
    ref_out, ref_pixel_grad, reference = grads(lambda px: embed_all_then_drop(vit, px, 0.75))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=atol)
    torch.testing.assert_close(pixel_grad, ref_pixel_grad, rtol=0, atol=atol)
    assert (pixel_grad == 0).any() and (pixel_grad != 0).any(), "dropped patches get no gradient, kept ones do"
    assert ours.keys() == reference.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=atol, msg=name)


def test_masked_embedding_costs_only_the_kept_patches():
    vit = tiny_vit(1, torch.float32)
    x = torch.randn(1, 4, 3, 32, 32)

    def flops(mask_ratio: float) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            vit.embed(x, mask_ratio)
        return counter.get_total_flops()

    assert flops(0.0) == 2 * 64 * (3 * 8 * 8) * 64  # 64 patches x (3*8*8 -> 64) multiply-adds
    assert flops(0.75) == flops(0.0) // 4
