"""ViCLIP model: towers, configs, weights. Imports nothing from training, evaluation or curation."""

from viclip.model.hub import export_weights, load_model, push_to_hub, save_pretrained
from viclip.model.tokenizer import clean_caption, tokenize
from viclip.model.viclip import (
    MODEL_CONFIGS,
    ViCLIP,
    ViCLIPConfig,
    VideoFeatures,
    create_model,
    forward_flops,
    get_config,
    list_models,
    vision_tokens,
    zero_shot,
)
from viclip.model.weights import (
    CheckpointError,
    export_official,
    export_safetensors,
    init_from_clip,
    load_checkpoint_file,
    load_weights,
    model_name_of,
)

__all__ = [
    "MODEL_CONFIGS", "CheckpointError", "ViCLIP", "ViCLIPConfig", "VideoFeatures", "clean_caption", "create_model",
    "export_official", "export_safetensors", "export_weights", "forward_flops", "get_config", "init_from_clip",
    "list_models", "load_checkpoint_file", "load_model", "load_weights", "model_name_of", "push_to_hub",
    "save_pretrained", "tokenize", "vision_tokens", "zero_shot",
]
