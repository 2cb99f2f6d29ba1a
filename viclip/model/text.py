"""The ViCLIP text tower: CLIP's causal text transformer, taken from open_clip.

open_clip's ``TextTransformer`` has exactly the official parameter names (``token_embedding``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``), keeps its
causal mask as a non-persistent buffer and pools the EOT token (argmax of the ids), so it is reused
as is rather than rewritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from viclip.model.vision import QuickGELU

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
