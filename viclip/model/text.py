"""The ViCLIP text tower: CLIP's causal text transformer, taken from open_clip.

open_clip's ``TextTransformer`` has exactly the official parameter names (``token_embedding``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``), keeps its
causal mask as a non-persistent buffer and pools the EOT token (argmax of the ids), so it is reused
as is rather than rewritten. Fine-tuning on longer texts grows its position table
(:func:`extend_positional_embedding`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from viclip.errors import ConfigError, DataError
from viclip.model.vision import QuickGELU, fit_temporal_embedding

if TYPE_CHECKING:
    from open_clip.transformer import TextTransformer


def build_text_tower(
    width: int, layers: int, heads: int, output_dim: int, context_length: int = 32, vocab_size: int = 49408
) -> TextTransformer:
    """CLIP text transformer with QuickGELU (as the released CLIP/ViCLIP weights) and linear projection."""
    # Imported here: open_clip's package import pulls in transformers and timm's model zoo (seconds),
    # which `import viclip` alone should not pay.
    from open_clip.transformer import TextTransformer

    return TextTransformer(
        context_length=context_length,
        vocab_size=vocab_size,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=output_dim,
        act_layer=QuickGELU,
        pool_type="argmax",
        proj_type="linear",
    )


POSITION_INITS = ("last", "clip", "interpolate")


def extend_positional_embedding(table: torch.Tensor, length: int, init: str = "last",
                                clip_table: torch.Tensor | None = None) -> torch.Tensor:
    """The text position table ``[n, W]`` grown to ``[length, W]`` for longer fine-tuning texts.

    ``interpolate`` is the official fine-tuning loader's rule (``interpolate_pos_embed_vit`` calls
    ``load_temp_embed_with_mismatch`` with ``add_zero=False`` on the text table too): all ``n`` trained
    rows resampled linearly to ``length``, so every position moves. ``last`` and ``clip`` instead keep
    the first ``n`` rows as they are (the tower is causal and pools the EOT token, so a text of at most
    ``n`` tokens embeds exactly as before) and add new rows:

    - ``last``: copies of row ``n - 1``, the last position the checkpoint was trained at;
    - ``clip``: CLIP's own rows ``n ... 76`` from ``clip_table`` ``[77, W]`` (ViCLIP's rows are CLIP's
      first ``n``, cut at initialisation and never trained while the tower is frozen), and copies of
      CLIP's last row beyond it (MSVD's 150 exceeds CLIP's 77).

    Fine-tuning trains the new rows (the text tower is trainable there).
    """
    n, width = table.shape
    if length <= n:
        raise ConfigError(f"text context length {length} must exceed the checkpoint's {n} to extend it")
    if init not in POSITION_INITS:
        raise ConfigError(f"text position init must be one of {POSITION_INITS}, got {init!r}")
    if init == "interpolate":
        return fit_temporal_embedding(table.unsqueeze(0), length)[0]
    if init == "last":
        source = table[-1:]
    else:
        if clip_table is None:
            raise ConfigError("text position init 'clip' needs CLIP's position table (clip_weights)")
        if clip_table.ndim != 2 or clip_table.shape[1] != width or clip_table.shape[0] <= n:
            raise DataError(f"CLIP's position table {tuple(clip_table.shape)} does not continue the "
                             f"checkpoint's [{n}, {width}]")
        source = clip_table[n:length].to(table)
    rows = length - n
    tail = torch.cat([source, source[-1:].expand(max(0, rows - len(source)), width)])[:rows]
    return torch.cat([table, tail.to(table)])
