"""Readers of a curation stage directory's outputs, shared by the stage tests."""

import tarfile
from pathlib import Path


def tar_keys(out: Path) -> list[str]:
    """Keys of every clip in the stage's tars, in tar order."""
    keys = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as t:
            keys += [n.split(".")[0] for n in t.getnames() if n.endswith(".mp4")]
    return keys
