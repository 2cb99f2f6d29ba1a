"""A bad evaluation input ends in one line naming the key or file (a UserError), never a traceback."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from viclip.errors import ConfigError, DataError
from viclip.eval.runner import video_protocol
from viclip.eval.tasks import load_task
from viclip.eval.templates import get_templates
from viclip.eval.views import Views

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "viclip" / "configs"), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


@pytest.mark.parametrize("value", ["0", "-2", "2.5"])
def test_protocol_num_frames_below_one_names_the_key(value):
    with pytest.raises(ConfigError, match=rf"protocol.num_frames must be a whole number >= 1, got {value}"):
        video_protocol(_cfg(f"protocol.num_frames={value}"))
    with pytest.raises(ConfigError, match="protocol.sampling must be one of middle, random, rand, got 'centre'"):
        video_protocol(_cfg("protocol.sampling=centre"))
    assert video_protocol(_cfg("protocol.num_frames=4")).num_frames == 4


def test_option_and_task_errors_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="templates.set='imagenet'"):
        get_templates("imagenet")
    with pytest.raises(ConfigError, match="protocol.views must be CLIPSxCROPS"):
        Views.parse("4")
    with pytest.raises(ConfigError, match=r"task.kind must be one of"):
        load_task({"name": "mine", "kind": "ranking"})
    with pytest.raises(ConfigError, match=r"task.annotation is not set for task mine"):
        load_task({"name": "mine", "kind": "retrieval"})
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"empty.json: the annotation list is empty"):
        load_task({"name": "mine", "kind": "retrieval", "annotation": str(tmp_path / "empty.json"),
                   "video_root": str(tmp_path)})
