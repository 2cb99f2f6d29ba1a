"""A Hugging Face hub cache laid out on disk, for offline tests of loading by name.

The layout is the one ``hf_hub_download`` reads (``models--ORG--NAME/snapshots/<commit>/<file>``
and ``refs/<branch>`` holding the commit), so offline lookups go through huggingface_hub's own code.
Files are plain copies rather than links into ``blobs/``, which the cache also accepts (Windows).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(cache: str | os.PathLike, repo_id: str, files: dict[str, str | os.PathLike],
                     branch: str = "main") -> str:
    """Put ``files`` (name in the repo -> local file) into ``cache`` as one commit of ``repo_id`` on ``branch``;
    returns the commit hash."""
    commit = hashlib.sha1(f"{repo_id}@{branch}:{sorted(files)}".encode()).hexdigest()
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit


def offline_hub(monkeypatch, cache: str | os.PathLike) -> None:
    """Point the hub cache at ``cache`` and turn offline mode on, through pytest's ``monkeypatch``.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import, into ``constants``; the
    constants are patched for this process and the variables for subprocesses.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
