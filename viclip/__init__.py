"""viclip: InternVid-style video-text curation and the ViCLIP video-text model."""

from viclip.data.transforms import VideoTransform
from viclip.data.video import read_video
from viclip.eval.score import score
from viclip.model import create_model, list_models, load_model, tokenize, zero_shot

video_transform = VideoTransform  # the name the README's examples use: viclip.video_transform(train=False)

__all__ = ["VideoTransform", "create_model", "list_models", "load_model", "read_video", "score", "tokenize",
           "video_transform", "zero_shot"]
