"""The GPU check cannot rot before a GPU is lent, and its one call on the lent machine brings back a table.

``bench/gpu_check.sh --cpu-smoke`` runs every section's code on ``tiny`` (random weights of the real
architecture, generated shards) in an environment shaped like the device image: only the image's packages
(linked from this environment) plus the wheels ``bench/gpu_wheels.py`` lists, installed as the script installs
them, so a wheel missing from the list fails here and not on the device. The driver's tests check that a
section past its box is killed with everything it started, and that the rows and the table still come out.
"""

import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import check_driver  # bench/ is not a package: imported from its path
import gpu_check
import gpu_wheels

WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "viclip-test-wheels"


def device_like_env(root: Path) -> Path:
    """A venv holding only the device image's packages (and torch's closure), linked from this environment."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    keep = gpu_wheels.device_has(gpu_wheels.marker_env(local))
    for dist in md.distributions():
        if gpu_wheels.canonical(dist.metadata["Name"]) not in keep:
            continue
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return root / "bin" / "python"


def test_gpu_check_sh_smoke_runs_in_a_device_like_environment_with_only_the_listed_wheels(tmp_path):
    local = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = gpu_wheels.fetch(WHEEL_CACHE / f"cp{local.replace('.', '')}", local)  # this Python's builds of the list
    assert {w.name.split("-")[0].lower() for w in wheels} >= {"deepspeed", "hydra_core", "av", "webdataset"}
    python = device_like_env(tmp_path / "env")
    probe = subprocess.run([str(python), "-c", "import torch, timm; import hydra"], capture_output=True, text=True,
                           check=False)
    assert probe.returncode and "hydra" in probe.stderr, "the device-like env must lack what the wheels bring"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DS_ACCELERATOR")}
    env.update(OUT=str(out), PYTHON=str(python), VICLIP_WHEELS=str(wheels[0].parent), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--cpu-smoke", "--workdir", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    log = (out / "gpu_check.log").read_text()
    table = log[log.index("\nsection "):]
    assert "(section)" not in table, table  # no section failed, timed out or was skipped
    for needle in ("matmul peak", "SDPA", "mask 0.9, checkpointing on, eager", "mask 0, checkpointing off, eager",
                   "compiled (first step", "x eager", "loader, CPU decoding", "no worker restart",
                   "loader, GPU decoding", "embeddings, bf16 autocast vs fp32"):
        assert needle in table, (needle, table)
    assert ": falls" in table, table
    assert "(bit-exact)" in table, "on the CPU the resumed run ends on the same weights bit for bit"
    records = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    statuses = {r["section"]: r["status"] for r in records if "status" in r}
    assert list(statuses) == list(gpu_check.PLAN), statuses  # in order of value, each written as it ended
    assert all(s.startswith("ok") for s in statuses.values()), statuses


def _section_script(marker: Path) -> list[str]:
    """A section that prints a row and an error line, starts a grandchild, then hangs."""
    code = (f"import subprocess, sys, time, json; print('ROW ' + json.dumps({{'item': 'early', 'value': '1'}}), "
            f"flush=True); p = subprocess.Popen(['sleep', '300']); open({str(marker)!r}, 'w').write(str(p.pid)); "
            "print('stuck in a kernel', file=sys.stderr, flush=True); time.sleep(300)")
    return [sys.executable, "-c", code]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited: only its parent's wait is pending
        return f.read().split()[2] != "Z"


def test_a_section_past_its_box_is_killed_with_its_children_and_keeps_rows_and_stderr(tmp_path):
    marker = tmp_path / "child.pid"
    result = check_driver.run_section("hang", _section_script(marker), box=4)
    assert result.status.startswith("timed out after 4 s (time box)"), result.status
    assert "stuck in a kernel" in result.status  # the tail of its stderr
    assert result.rows == [{"item": "early", "value": "1"}]
    deadline = time.monotonic() + 5
    while _alive(int(marker.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(marker.read_text())), "the section's grandchild outlived its box"


def test_one_deadline_boxes_each_section_by_the_time_left_and_the_table_still_comes_out(tmp_path, monkeypatch):
    monkeypatch.setattr(check_driver, "MIN_BOX", 1.0)
    quick = [sys.executable, "-c", "print('ROW {\"item\": \"quick\", \"value\": \"ok\"}')"]
    commands = {"quick": quick, "hang": _section_script(tmp_path / "child.pid"), "late": quick}
    jsonl = tmp_path / "rows.jsonl"
    start = time.monotonic()
    results, stopped = check_driver.run_all([("quick", 60), ("hang", 60), ("late", 60)], commands.__getitem__,
                                            deadline=start + 8, jsonl=jsonl)
    assert stopped is None and time.monotonic() - start < 15
    status = {r.name: r.status for r in results}
    assert status["quick"].startswith("ok") and "time box" in status["hang"], status
    assert status["late"].startswith("skipped"), status
    table = check_driver.format_table(results)
    assert "quick" in table and "early" in table and "(section)" in table
    written = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["section"] for r in written if "status" in r] == ["quick", "hang", "late"]


def test_out_of_memory_in_any_form_is_caught_and_the_batch_bisected():
    class Runner:
        class optimizer:
            @staticmethod
            def zero_grad(set_to_none: bool) -> None:
                pass

        def run(self, batch, mask, steps):
            if batch > 12:
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
            return type("R", (), {"batch": batch})(), 0.0

    best, why = gpu_check.largest_batch(Runner(), 0.9, start=2, cap=64, steps=1, deadline=time.monotonic() + 60)
    assert best.batch == 12 and why == "out of memory at 14"  # 16 failed, 12 ran, 14 failed
    assert not gpu_check.is_oom(RuntimeError("shape mismatch"))  # a real bug is not taken for a full card

    class Broken(Runner):
        def run(self, batch, mask, steps):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        gpu_check.largest_batch(Broken(), 0.9, start=2, cap=64, steps=1, deadline=time.monotonic() + 60)


def test_peak_falls_back_to_the_datasheet_by_card_name():
    assert gpu_check.datasheet_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.datasheet_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.datasheet_tflops("NVIDIA H200") == 989.4
    assert gpu_check.datasheet_tflops("Some Future GPU") is None


def test_the_reason_flash_is_not_used_is_read_from_stderr_written_by_native_code():
    from viclip.train.kernels import captured_stderr

    with captured_stderr() as lines:
        os.write(2, b"Flash attention requires q, k, v to have the same last dimension\n")
    assert lines == ["Flash attention requires q, k, v to have the same last dimension"]
