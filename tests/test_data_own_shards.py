"""Training on one's own shards: `data=shards data.shards=DIR` plans its steps from DIR's sizes.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from viclip.data.synthetic import make_synthetic
from viclip.distributed import fit_workers
from viclip.errors import ConfigError
from viclip.model import get_config
from viclip.train import loader as train_loader
from viclip.train.config import validate_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "viclip" / "configs"
N_CLIPS = 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("mine"), n_train=N_CLIPS, n_eval=4, size=32, num_frames=8,
                          shard_size=10).train_shards


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _loader(cfg):
    model_cfg = get_config(cfg.model.name, **OmegaConf.to_container(cfg.model.overrides))
    return train_loader.build_loader(cfg, model_cfg, int(cfg.train.batch_size), 0, 1)


@pytest.mark.parametrize("batch_size", [4, 6])
def test_own_shards_plan_their_steps_from_sizes_json(tmp_path, shards, batch_size):
    cfg = _compose(["data=shards", f"data.shards={shards}", "model=tiny", f"train.batch_size={batch_size}",
                    f"output_root={tmp_path}"])
    validate_train_config(cfg)
    assert len(_loader(cfg)) == N_CLIPS // batch_size  # the steps of an epoch follow the shards' clip count


def test_a_paper_corpus_pointed_at_other_shards_names_both_counts(tmp_path, shards):
    cfg = _compose(["data=internvid_10m_flt", f"data.sources.internvid_10m_flt.shards={shards}", "model=tiny",
                    "train.batch_size=4", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"count {N_CLIPS} samples but data.sources.internvid_10m_flt.num_samples="
                                          r"10647458; set .*=null"):
        _loader(cfg)
    cfg = _compose(["data=internvid_10m_flt", f"data.sources.internvid_10m_flt.shards={shards}", "model=tiny",
                    "train.batch_size=4", "data.sources.internvid_10m_flt.num_samples=null"])
    assert len(_loader(cfg)) == N_CLIPS // 4


def test_demo_data_is_generated_only_when_a_source_reads_it(tmp_path, shards):
    cfg = _compose(["experiment=demo", f"data.root={tmp_path / 'demo'}", f"data.sources.synthetic.shards={shards}"])
    train_loader.prepare(cfg.data, is_main=True)
    assert not (tmp_path / "demo").exists()


def test_cpu_runs_use_at_most_a_worker_per_core(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    data = OmegaConf.create({"num_workers": 8})
    assert train_loader.loader_workers(data, cuda=False) == 2
    assert train_loader.loader_workers(data, cuda=True) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert train_loader.loader_workers(data, cuda=False) == 1
    assert fit_workers(4, cuda=False) == 1  # evaluation's loader asks the same rule
