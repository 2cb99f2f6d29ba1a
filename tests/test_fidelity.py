"""The table of record and the configs it describes: every experiment composes, the release's data mix is its
own experiment beside the paper's, and docs/fidelity.md keeps one row shape (field, ours, official, paper, switch)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "viclip" / "configs" / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "viclip" / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = _compose([f"experiment={name}", "checkpoint=/weights/v.pth"] if name.startswith("ft_") else
                   [f"experiment={name}"])
    assert cfg.run_name == name


def test_the_release_data_mix_is_its_own_experiment_beside_the_papers():
    paper = OmegaConf.to_container(_compose(["experiment=viclip_l14_internvid_10m_flt"]), resolve=False)
    release = OmegaConf.to_container(_compose(["experiment=viclip_l14_internvid_10m_flt_webvid_release"]),
                                     resolve=False)
    assert list(paper["data"]["sources"]) == ["internvid_10m_flt"]  # the paper's: 10M-FLT alone (the default)
    assert {k for k in release if release[k] != paper[k]} == {"run_name", "data"}  # the same recipe otherwise
    sources = release["data"]["sources"]
    assert list(sources) == ["internvid_10m_flt", "webvid_10m"]
    assert sources["internvid_10m_flt"]["shards"] == paper["data"]["sources"]["internvid_10m_flt"]["shards"]
    for corpus in sources.values():  # one concatenated list, as the official ConcatDataset: weight = size
        assert corpus["weight"] == corpus["num_samples"]
