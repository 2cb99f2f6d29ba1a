"""viclip: InternVid-style video-text curation and the ViCLIP video-text model."""

from viclip.data.transforms import video_transform
from viclip.data.video import read_video
from viclip.model import create_model, list_models, load_model, tokenize, zero_shot

__all__ = ["create_model", "list_models", "load_model", "read_video", "tokenize", "video_transform", "zero_shot"]
