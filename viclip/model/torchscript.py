"""OpenAI's TorchScript CLIP archives (``ViT-L-14.pt``) read as data: their tensors, and no code run.

``torch.jit.load`` would rebuild the archive's modules and run its TorchScript (a class's
``__setstate__`` runs on load and can read and write files), so it is never called on a user's file.
A TorchScript archive is a zip: ``data.pkl`` pickles the module tree (``__torch__.*`` objects whose
state is a dict of attributes) and ``data/<key>`` records hold the tensor bytes. A restricted
unpickler reads it: tensor rebuilds, storages and plain containers only, every ``__torch__`` class
mapped to an inert record, any other global refused. An archive whose TorchScript defines
``__setstate__`` (code that runs on load, its state not plain attributes) is refused with
:class:`~viclip.errors.UnsafeFileError`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from viclip.errors import DataError, UnsafeFileError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a ``__torch__`` class: keeps the pickled state, runs nothing."""

    state: object = None  # NEWOBJ creates it without __init__; BUILD hands it the state

    def __setstate__(self, state: object) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_: object) -> torch.Tensor:
    """The view ``(offset, size, stride)`` of a flat storage (requires_grad, hooks ignored); copied out unless
    it is the whole storage in order (the usual case: one storage per parameter)."""
    view = torch.as_strided(storage, size, stride, offset)
    whole = offset == 0 and view.numel() == storage.numel() and view.is_contiguous()
    return view if whole else view.clone()


def _same(value: object, *_: object) -> object:
    """TorchScript's typed-list builders (``build_intlist`` ...) and ``restore_type_tag``: the value itself."""
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch.jit._pickle", name): _same for name in (
        "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {"qualified_name": f"{module}.{name}"})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafeFileError(f"{self.path}: refused: its data.pkl names {module}.{name}, which is neither a tensor "
                              f"nor a plain container; reading it could run code")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise DataError(f"{self.path}: data.pkl refers to {pid!r}, not a tensor storage")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError as e:
                raise DataError(f"{self.path}: the archive lacks the tensor record data/{key}") from e
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _tensors(obj: object, prefix: str, out: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor attribute below ``obj``, named by its attribute path (the module's state-dict names)."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, _ScriptObject) and obj.state is not None:
        if not isinstance(obj.state, dict):
            raise UnsafeFileError(f"{path}: refused: {obj.qualified_name} keeps a custom state (its TorchScript "
                                  f"__setstate__ would run on load)")
        for name, value in obj.state.items():
            _tensors(value, f"{prefix}.{name}" if prefix else str(name), out, path)


def read_torchscript(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by attribute path, without running any of its code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
            if pkl is None:
                raise DataError(f"{path}: a zip without <archive>/data.pkl: not a TorchScript archive")
            prefix = pkl.removesuffix("data.pkl")
            setstate = [n for n in names if n.startswith(f"{prefix}code/") and n.endswith(".py")
                        and b"def __setstate__" in archive.read(n)]
            if setstate:
                raise UnsafeFileError(f"{path}: refused: its TorchScript defines __setstate__ ({setstate[0]}), code "
                                      f"that runs on load; give the weights as a state dict (torch.save) instead")
            root = _Unpickler(archive.read(pkl), archive, prefix, path).load()
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, RuntimeError) as e:
        raise DataError(f"{path}: not a readable TorchScript archive, truncated or corrupt ({e})") from e
    out: dict[str, torch.Tensor] = {}
    _tensors(root, "", out, path)
    return out
