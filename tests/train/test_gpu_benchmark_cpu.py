"""benchmarks/gpu_train.py's rows run on the CPU (tiny shape, bf16, compiled blocks): the GPU
benchmark's code paths (fp8 base with its weights in host memory, fused projections, compiled
blocks in CUDA-graph mode, the same through the recipe's Trainer, the memory profile) work
before a card is at hand, and the rows compute the same loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_rows_run_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, AFFINA_HOME=str(tmp_path / "home"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--device", "cpu", "--shape", "tiny",
         "--seq", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
         "--cases", "peft,speed_graphs_fp8_fused,trainer,trainer_hf,memory,qlora", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "memory + QLoRA 4-bit, PEFT's preparation (rest fp32): skipped (a CUDA case)" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 5 and all(line.count("|") == 9 for line in table), done.stdout
    result = json.loads(out.read_text())
    rows = {r["key"]: r for r in result["rows"]}
    assert list(rows) == ["peft", "speed_graphs_fp8_fused", "trainer", "trainer_hf", "memory"]
    assert all(r["tokens_per_s"] > 0 and r["peak_gib"] is None for r in rows.values())
    peft = rows["peft"]["first_loss"]
    assert abs(rows["memory"]["first_loss"] - peft) < 1e-3 * peft  # the same model and loss
    fp8 = rows["speed_graphs_fp8_fused"]["first_loss"]
    assert fp8 != peft and abs(fp8 - peft) < 1e-2 * peft  # an fp8 base: close, not equal
    # The recipe's Trainer takes the same batches in the same order: the fp8 row's first loss.
    assert abs(rows["trainer"]["first_loss"] - fp8) < 1e-3 * fp8
    assert rows["trainer_hf"]["first_loss"] == rows["trainer"]["first_loss"]  # bookkeeping only
