"""bench/gpu_check.py cannot rot before a GPU is lent: ``--cpu-smoke`` runs every section's code on ``tiny``
(random weights of the real architecture, generated shards), and a section past its time box is
reported instead of ending the check."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # bench/ is not a package: imported from its path


def test_cpu_smoke_runs_every_section_and_prints_one_table(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--cpu-smoke", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for name in gpu_check.SECTIONS:
        assert f"[{name}] ok" in out, out
    table = out[out.index("\nsection "):]
    assert "(section)" not in table, "no section failed or timed out"
    for needle in ("matmul peak", "SDPA", "mask 0.9, checkpointing on, eager", "mask 0, checkpointing off, eager",
                   "compiled (first step", "x eager", "loader, CPU decoding", "loader, GPU decoding",
                   "embeddings, bf16 autocast vs fp32"):
        assert needle in table, (needle, table)
    assert ": falls" in table, table
    assert "(bit-exact)" in table, "on the CPU the resumed run ends on the same weights bit for bit"


def test_a_section_past_its_time_box_is_reported_not_fatal(tmp_path):
    settings = {"smoke": True, "model": "tiny", "device": "cpu", "steps": 1, "workdir": str(tmp_path), "peak": None,
                "batches": {}}
    _, status = gpu_check.run_section("step", settings, budget=3)
    assert status == "timed out after 3 s (time box)"
