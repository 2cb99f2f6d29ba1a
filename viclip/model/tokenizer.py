"""CLIP BPE tokenisation with the official ViCLIP caption cleaning.

The BPE itself is open_clip's ``SimpleTokenizer`` (the same vocabulary, ftfy/html cleaning,
lower-casing and truncation rule as OpenAI CLIP, which the official code copies); what ViCLIP adds
is a context length of 32 and a punctuation-stripping pass over every caption before tokenising.
"""

from __future__ import annotations

import functools
import re

import torch

CONTEXT_LENGTH = 32
SOT_TOKEN = 49406
EOT_TOKEN = 49407

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def clean_caption(text: str, max_words: int | None = None) -> str:
    """The official caption cleaning (``pre_text``): lower-case, strip ``, . ' ! ? " ( ) * # : ; ~``,
    map ``-`` and ``/`` to spaces, collapse spaces, optionally keep the first ``max_words`` words."""
    text = _PUNCT.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    if max_words:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return text


@functools.lru_cache(maxsize=1)
def _bpe():
    # Imported lazily: building the BPE merges table takes ~0.3 s and most imports never tokenise.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def tokenize(
    texts: str | list[str], context_length: int = CONTEXT_LENGTH, official_cleaning: bool = True
) -> torch.LongTensor:
    """Token ids ``[N, context_length]``: SOT, BPE, EOT, zero padding; too-long text is cut with EOT last."""
    if isinstance(texts, str):
        texts = [texts]
    if official_cleaning:
        texts = [clean_caption(t) for t in texts]
    return _bpe()(list(texts), context_length=context_length)
