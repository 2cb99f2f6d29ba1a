"""Which kernels a run uses: ``train.compile`` (torch.compile of each tower's block stack) and the attention
kernel SDPA picks for the model's shapes, reported at the start of training.

Why the block stack, with ``dynamic=False``: the masked and unmasked phases feed the vision blocks different
token counts, and code compiled for static shapes is compiled once per shape, on the first step of each
phase, then reused by every step. Compiling each block instead would compile once per drop-path rate
(each block has its own, linspace(0, 0.1), and the rate is a constant of the graph): 24 graphs per phase
for ViT-L, past torch's recompile limit. The masking draws (``random_keep``) stay in eager code, and
inductor runs eager's random ops for drop path (``fallback_random``), so a compiled run draws the same
masks and drop paths as an eager one and its loss differs only by float rounding.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend

from viclip.model import vision_tokens

SDPA_NAMES = {
    SDPBackend.FLASH_ATTENTION: "flash",
    SDPBackend.EFFICIENT_ATTENTION: "memory-efficient",
    SDPBackend.CUDNN_ATTENTION: "cudnn",
    SDPBackend.MATH: "math",
}
TOWERS = ("vision_encoder", "text_encoder")  # a classifier has only the first


def compile_towers(model: nn.Module) -> None:
    """Compile each tower's block stack in place (parameter names, and so checkpoints, unchanged)."""
    for name in TOWERS:
        if hasattr(model, name):
            getattr(model, name).transformer.compile(dynamic=False, options={"fallback_random": True})


def sdpa_backend(heads: int, tokens: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 causal_mask: bool = False) -> tuple[str, str]:
    """The kernel ``scaled_dot_product_attention`` dispatches to for these shapes, and why not flash.

    Asks the dispatcher itself (``torch._fused_sdp_choice``, what SDPA calls to choose); on CUDA the
    reason is the dispatcher's own message from ``can_use_flash_attention``, empty where flash is used.
    ``causal_mask``: an additive float mask, as CLIP's text tower passes (flash takes no explicit mask).
    """
    q, k, v = (torch.empty(1, heads, tokens, head_dim, dtype=dtype, device=device, requires_grad=True)
               for _ in range(3))
    mask = torch.full((tokens, tokens), float("-inf"), dtype=dtype, device=device).triu(1) if causal_mask else None
    backend = SDPA_NAMES.get(SDPBackend(torch._fused_sdp_choice(q, k, v, mask)), "unknown")
    reason = ""
    if backend != "flash" and device.type == "cuda":
        # The dispatcher's reasons are C++ warnings: some reach Python's warnings, others only stderr.
        with warnings.catch_warnings(record=True) as caught, captured_stderr() as err:
            warnings.simplefilter("always")
            params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, False)
            torch.backends.cuda.can_use_flash_attention(params, debug=True)
        messages = [str(w.message).strip() for w in caught] + [line.strip() for line in err if line.strip()]
        reason = "; ".join(dict.fromkeys(messages))
    return backend, reason


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """The lines written to file descriptor 2 inside the block (C++ code writes there, not to sys.stderr)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def describe_kernels(model: nn.Module, mask_ratios: list[float], dtype: torch.dtype, device: torch.device) -> str:
    """One line per tower and phase: the SDPA kernel at the model's real attention shapes and dtype."""
    cfg = model.cfg
    shapes = [(f"video tower, mask {r:g}", cfg.heads, vision_tokens(cfg, r), cfg.width, False)
              for r in sorted(set(mask_ratios), reverse=True)]
    if hasattr(model, "text_encoder"):
        # open_clip's text blocks attend through nn.MultiheadAttention, which calls SDPA with the causal mask.
        shapes.append(("text tower", cfg.text_heads, cfg.context_length, cfg.text_width, True))
    lines = []
    for what, heads, tokens, width, causal in shapes:
        backend, reason = sdpa_backend(heads, tokens, width // heads, dtype, device, causal)
        lines.append(f"attention ({what}, {tokens} tokens, {str(dtype).removeprefix('torch.')}, {device.type}): "
                     f"SDPA {backend}" + (f" ({reason})" if reason else ""))
    return "\n".join(lines)


def prepare_kernels(model: nn.Module, compile: bool, mask_ratios: list[float], dtype: torch.dtype,
                    device: torch.device) -> str:
    """Compile the towers when ``train.compile`` asks for it; returns the report printed at training start."""
    report = describe_kernels(model, mask_ratios, dtype, device)
    if not compile:
        return report + "\ntrain.compile: off (eager blocks)"
    compile_towers(model)
    return report + "\ntrain.compile: block stacks compiled (dynamic=False: once per phase, on its first step)"
