"""Throughput, data-wait share, model FLOPs utilisation from an explicit FLOP count, and time left.

FLOPs come from the model's analytic count (``viclip.model.forward_flops``: matrix products only,
as in nanoGPT's and PaLM's MFU). Masking keeps only a share of the patch tokens in the vision
transformer, so each phase has its own count.
Activation checkpointing recomputes the forward pass but is not counted: MFU measures useful work.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from viclip.model import forward_flops

# Dense bf16 peak of one device, by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def train_flops_per_clip(cfg, mask_ratio: float) -> float:
    """Forward + backward (3x forward) of one video-text pair; a frozen text tower runs forward only."""
    vision = forward_flops(cfg, mask_ratio, text=False)
    text = forward_flops(cfg, mask_ratio, text=True) - vision
    return 3 * vision + text * (1 if cfg.freeze_text else 3)


def peak_flops(device: torch.device) -> float | None:
    """bf16 dense peak of one accelerator, or None where unknown (the CPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


@dataclass
class StepTimes:
    data_wait: float
    total: float
    clips: int


class ThroughputMeter:
    """Sliding-window clips/s, share of the step spent waiting for data, and MFU of this rank."""

    def __init__(self, window: int = 20) -> None:
        self.steps: deque[StepTimes] = deque(maxlen=window)
        self._t0 = time.perf_counter()
        self._data_ready = self._t0

    def start(self) -> None:
        """Mark the start of a step, before the next batch is requested."""
        self._t0 = time.perf_counter()

    def data_ready(self) -> None:
        """Mark the moment the batch arrived."""
        self._data_ready = time.perf_counter()

    def end(self, clips: int) -> StepTimes:
        now = time.perf_counter()
        st = StepTimes(self._data_ready - self._t0, now - self._t0, clips)
        self.steps.append(st)
        return st

    def clips_per_s(self) -> float:
        total = sum(s.total for s in self.steps)
        return sum(s.clips for s in self.steps) / total if total > 0 else 0.0

    def data_wait_share(self) -> float:
        total = sum(s.total for s in self.steps)
        return sum(s.data_wait for s in self.steps) / total if total > 0 else 0.0

    def mfu(self, flops_per_clip: float, peak: float | None) -> float | None:
        return None if peak is None else self.clips_per_s() * flops_per_clip / peak


class StepClock:
    """Wall time of optimizer steps: elapsed since this process began training, and steps/s over the
    last ``window`` steps (a resumed run's first steps, slowed by loader start-up, soon leave it)."""

    def __init__(self, window: int = 50) -> None:
        self.start = time.monotonic()
        self.ticks: deque[float] = deque([self.start], maxlen=window + 1)

    def new_phase(self) -> None:
        """Forget the last phase's steps: phases differ in cost per step (masking)."""
        self.ticks = deque([time.monotonic()], maxlen=self.ticks.maxlen)

    def tick(self) -> None:
        """Mark the end of an optimizer step."""
        self.ticks.append(time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def steps_per_s(self) -> float | None:
        span = self.ticks[-1] - self.ticks[0]
        return (len(self.ticks) - 1) / span if len(self.ticks) > 1 and span > 0 else None


def time_left(steps_per_s: float | None, steps_left: int,
              later_steps: float = 0.0) -> tuple[float | None, float | None]:
    """Seconds to the end of the phase and of the run at the current rate, or (None, None) before one is known.

    ``later_steps`` counts the phases still to come in steps of this phase: each of their steps
    weighted by its FLOPs per clip over this phase's (an unmasked step costs several masked ones).
    """
    if not steps_per_s:
        return None, None
    phase = steps_left / steps_per_s
    return phase, phase + later_steps / steps_per_s
