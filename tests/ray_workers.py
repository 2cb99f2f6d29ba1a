"""Code the Ray tests' workers import (tests/ is on their PYTHONPATH): source hooks and a counted model stage.

``install_hooks`` runs in every Ray worker at its start (``worker_process_setup_hook``); the supervised
video workers a shard forks inherit it. Sources named ``hang*`` spin, ``crash*`` segfault their video
worker, and ``kill*`` SIGKILL the Ray worker running their shard, once per test run (a marker file in
``$VICLIP_TEST_MARKS`` holds the killed pid), so Ray's retry of the shard runs it normally.
"""

import faulthandler
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

MARKS = "VICLIP_TEST_MARKS"


def install_hooks() -> None:
    from viclip.curation import clips

    original = clips.split_video

    def split_video(source, path, cfg):
        if source.video_id.startswith("hang"):
            time.sleep(3600)
        if source.video_id.startswith("crash"):
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        mark = Path(os.environ[MARKS]) / f"killed-{source.video_id}"
        if source.video_id.startswith("kill") and not mark.exists():
            mark.write_text(str(os.getppid()))  # the Ray worker running this shard
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(1)
        return original(source, path, cfg)

    clips.split_video = split_video


def counted(marks: str, make: Callable[[], Any]) -> Any:
    """``make()`` (a job's runner, its model loaded), leaving a file in ``marks`` per call."""
    Path(marks, f"built-{os.getpid()}-{uuid.uuid4().hex}").touch()
    return make()


class CountedModel:
    """A table stage's process that stands for a model: each construction leaves a file in ``marks``."""

    def __init__(self, marks: str) -> None:
        Path(marks, f"built-{os.getpid()}-{uuid.uuid4().hex}").touch()
        self.pid = os.getpid()

    def __call__(self, shard) -> tuple[pa.Table, dict]:
        status = shard.table.column("status").to_pylist()
        shard.advance(status.count("kept"))
        lengths = pa.array([len(k) if s == "kept" else None for s, k in
                            zip(status, shard.table.column("clip_key").to_pylist())], pa.int64())
        return shard.table.append_column("key_length", lengths), {"clips": status.count("kept"), "failed": 0}
