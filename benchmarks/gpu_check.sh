#!/bin/bash
# The GPU checks in one go on a machine with one CUDA card: benchmarks/gpu_train.py's rows for
# the 8B shape (with a kernel-time trace of the speed row) and the 1B shape, then the CUDA tests.
# Each part runs under its own time limit, so one that hangs or runs out of memory leaves the
# others their time; tables, JSON rows and the trace go to $OUT (default ./gpu_check).
#
#   bash benchmarks/gpu_check.sh
#   WHEELS=dir bash benchmarks/gpu_check.sh   # first install the wheels in dir (liger-kernel,
#                                             # bitsandbytes) into a scratch target, no index
# Time limits (seconds), rows and tests can be changed: T_8B, T_1B, T_TESTS, CASES_8B, CASES_1B,
# TRACE_8B (the 8B row whose kernel time is broken down), TESTS (default tests/gpu). The default
# rows are the speed question still open (CUDA graphs, the fp8 base, fused projections), the
# likeliest fastest first and then the same through the recipe's Trainer (and through one with
# transformers' per-step reads of the loss and token count), so a row cut off by the limit is one of the least needed, then the
# memory profile on a bf16 base (its input embedding table now in host memory); the memory rows
# measured before are CASES_8B=peft,memory,qlora,qlora_bf16. The default limits add up to 570 s,
# inside one 10-minute call.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  if ! python -m pip install -q --no-deps --no-index --target /tmp/affina-gpu-site "$WHEELS"/*.whl; then
    for w in "$WHEELS"/*.whl; do python -m zipfile -e "$w" /tmp/affina-gpu-site; done  # no pip there
  fi
  export PYTHONPATH=/tmp/affina-gpu-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device here; on the CPU run: python benchmarks/gpu_train.py --device cpu --shape tiny" >&2
  exit 2
fi
export AFFINA_HOME=${AFFINA_HOME:-/tmp/affina-gpu-home}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt"
import importlib.util, torch, transformers, peft
extra = {m: importlib.util.find_spec(m) is not None for m in ("liger_kernel", "bitsandbytes")}
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, {extra}")
PY
timeout "${T_8B:-330}" python benchmarks/gpu_train.py --shape llama3-8b --batch 1 --seq 2048 \
  --cases "${CASES_8B:-peft,speed_graphs_fp8_fused,trainer,trainer_hf,speed_graphs_fp8,speed_graphs,speed,memory}" \
  --trace "${TRACE_8B:-speed_graphs_fp8_fused}" \
  --trace-out "$OUT/trace_8b.md" --json "$OUT/rows_8b.json" 2>&1 | grep -v Warning | tee "$OUT/table_8b.md"
timeout "${T_1B:-90}" python benchmarks/gpu_train.py --shape llama3.2-1b --batch 4 --seq 2048 \
  --cases "${CASES_1B:-peft,speed,speed_fused}" --json "$OUT/rows_1b.json" 2>&1 \
  | grep -v Warning | tee "$OUT/table_1b.md"
if [ "${T_TESTS:-150}" -gt 0 ]; then
  timeout "${T_TESTS:-150}" python -m pytest -q -p no:cacheprovider ${TESTS:-tests/gpu} 2>&1 | tail -15 | tee "$OUT/tests.txt"
fi
