"""The Hydra configs (train.yaml, eval.yaml and their groups), shipped as package data: ``pkg://viclip.configs``."""
