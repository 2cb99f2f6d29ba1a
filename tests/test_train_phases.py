"""A phase's own batch size and the optimizer state at a phase boundary (the official unmasked phase: 32
clips per GPU, a new AdamW), and a resume across the boundary that ends with the same weights in both
optimizer modes. Runs are a few steps of the `tiny` model on 32 px clips, in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_trainer import SMALL, _compose, _weights

# 96 clips on 1 rank: the masked phase at 8 clips (12 batches an epoch), the unmasked one at 4 (24)
PHASES = [*SMALL, "train.ckpt_every=3", "train.keep_checkpoints=10", "phases.pretrain.epochs=0.5",
          "phases.pretrain.warmup_epochs=0.25", "phases.unmasked.epochs=0.25", "phases.unmasked.batch_size=4",
          "phases.unmasked.warmup_epochs=0"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def one_process(data_root, monkeypatch):
    monkeypatch.setenv("VICLIP_DATA", str(data_root))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def _run(out: Path, name: str, mode: str, *extra: str):
    """Train; return the result and, per optimizer step, (phase, batch size, Adam step count after it)."""
    from viclip.train import trainer
    from viclip.train.engine import base_optimizer

    seen: list[tuple[str, int, int]] = []

    class Spy(trainer.Trainer):
        def forward_loss(self, batch, phase):
            self.last_batch = (phase.name, len(batch["video"]))
            return super().forward_loss(batch, phase)

        def after_step(self):
            super().after_step()
            steps = {int(s["step"]) for s in base_optimizer(self.optimizer).state.values()}
            seen.append((*self.last_batch, steps.pop()))

    cfg = _compose([*PHASES, f"output_root={out}", f"run_name={name}", f"train.phase_optimizer={mode}", *extra])
    return trainer.train(cfg, Spy), seen


@pytest.mark.parametrize("mode", ["fresh", "carry"])
def test_the_phase_batch_reaches_the_loader_and_the_optimizer_state_follows_the_switch(tmp_path, mode):
    result, seen = _run(tmp_path, "straight", mode)
    # 6 masked steps of 8 clips; the unmasked phase's epoch is 24 batches of 4: 6 steps
    assert [(p, b) for p, b, _ in seen] == [("pretrain", 8)] * 6 + [("unmasked", 4)] * 6
    adam_steps = [s for _, _, s in seen]
    assert adam_steps == (list(range(1, 7)) * 2 if mode == "fresh" else list(range(1, 13)))

    # resume at the boundary (the masked phase's end) and inside the unmasked phase: the same weights
    ckpts = tmp_path / "straight" / "checkpoints"
    end = _weights(Path(result.exports["unmasked"]))
    for tag in ("step_00000006", "step_00000009"):
        resumed, seen_again = _run(tmp_path, f"from_{tag}", mode, f"resume={ckpts / tag}")
        assert seen_again == seen[int(tag[-2:]):]  # the steps left, at the phase's batch, same Adam counts
        again = _weights(Path(resumed.exports["unmasked"]))
        assert all(torch.equal(end[k], again[k]) for k in end), f"{mode}: resumed from {tag}, the weights differ"


def test_the_official_unmasked_phase_plan_at_64_gpus():
    from viclip.train.config import plan

    lines = plan(_compose(["experiment=viclip_l14_internvid_10m_flt"]), 64)
    assert lines[1].startswith("[pretrain] 3240 steps (10 epochs of 324) at 512 clips per rank (32768 per step)")
    assert lines[2].startswith("[unmasked] 2599 steps (0.5 epochs of 5198) at 32 clips per rank (2048 per step)")
