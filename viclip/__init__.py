"""viclip: InternVid-style video-text curation and the ViCLIP video-text model."""

import importlib
from typing import Any

# name -> (module, attribute), imported on first use: `import viclip.commands` (every command's --help) and
# the curation stages then do not pay for torch and torchvision before they parse their arguments
_EXPORTS = {"VideoTransform": ("viclip.data.transforms", "VideoTransform"),
            "video_transform": ("viclip.data.transforms", "VideoTransform"),  # the README's spelling
            "read_video": ("viclip.data.video", "read_video"), "score": ("viclip.eval.score", "score"),
            **{name: ("viclip.model", name) for name in ("create_model", "list_models", "load_model", "tokenize",
                                                          "zero_shot")}}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'viclip' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__all__ = ["VideoTransform", "create_model", "list_models", "load_model", "read_video", "score", "tokenize",
           "video_transform", "zero_shot"]
