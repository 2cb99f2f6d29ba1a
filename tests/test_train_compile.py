"""``train.compile``: compiled block stacks train to the eager loss and compile once per phase; the SDPA
kernel reported is the one that runs. Random weights of the real architecture (tiny sizes), inductor on
the CPU (the first run compiles C++ kernels: tens of seconds; torch caches them for later runs)."""

import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

import viclip
from viclip.train.kernels import SDPA_NAMES, compile_towers, describe_kernels, sdpa_backend
from viclip.train.loss import ClipLoss

# Two vision blocks: the second has drop path 0.1, a random op inside the compiled graph.
TINY = {"layers": 2, "text_layers": 1, "drop_path_rate": 0.1}


def train_losses(compiled: bool, masks: list[float]) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of AdamW steps at the given mask ratios, and the final state dict (for its names)."""
    torch.manual_seed(0)
    model = viclip.create_model("tiny", **TINY)
    if compiled:
        compile_towers(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = ClipLoss(temp_min=model.cfg.temp_min)
    torch.manual_seed(1)  # the masking and drop-path draws
    video = torch.randn(4, 8, 3, 32, 32)
    tokens = viclip.tokenize(["a red circle", "a blue square", "a green star", "a red square"])
    losses = []
    for mask_ratio in masks:
        loss = loss_fn(*model(video, tokens, mask_ratio=mask_ratio), model.temp, torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_compiled_towers_train_to_the_eager_loss_and_compile_once_per_phase():
    masks = [0.5, 0.5, 0.5, 0.0, 0.0]  # a masked phase, then an unmasked one with more tokens
    eager, eager_weights = train_losses(False, masks)
    torch._dynamo.reset()
    counters.clear()
    compiled, compiled_weights = train_losses(True, masks)
    # One graph per vision token count (two phases) and one for the text tower; none per step.
    assert counters["stats"]["unique_graphs"] == 3
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert len(set(eager)) == len(eager), "the loss moves, so equal losses compare training, not a constant"
    assert compiled_weights.keys() == eager_weights.keys(), "compiling leaves parameter names alone"


def sdpa_kernel_that_ran(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}


def test_reported_sdpa_backend_is_the_kernel_that_runs():
    kernels = {"flash": "flash", "memory-efficient": "efficient", "math": "math", "cudnn": "cudnn"}
    for causal in (False, True):
        backend, _ = sdpa_backend(4, 17, 16, torch.float32, torch.device("cpu"), causal_mask=causal)
        assert backend in SDPA_NAMES.values()
        q, k, v = (torch.randn(1, 4, 17, 16) for _ in range(3))
        mask = torch.full((17, 17), float("-inf")).triu(1) if causal else None
        ran = sdpa_kernel_that_ran(q, k, v, mask)
        if backend == "math":  # the math path is plain matmuls and softmax, no fused op
            assert not ran, ran
        else:
            assert any(kernels[backend] in name for name in ran), (backend, ran)


def test_kernel_report_names_each_tower_and_phase():
    model = viclip.create_model("tiny")  # 4 tubelets x 16 patches
    report = describe_kernels(model, [0.9, 0.0], torch.float32, torch.device("cpu")).splitlines()
    assert [line.split(":")[0] for line in report] == [
        "attention (video tower, mask 0.9, 8 tokens, float32, cpu)",
        "attention (video tower, mask 0, 65 tokens, float32, cpu)",
        "attention (text tower, 32 tokens, float32, cpu)",
    ]
    assert all(line.split("SDPA ")[1].split(" ")[0] in SDPA_NAMES.values() for line in report)
