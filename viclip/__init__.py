"""viclip: InternVid-style video-text curation and the ViCLIP video-text model."""

from viclip.model.tokenizer import tokenize

__all__ = ["tokenize"]
