#!/usr/bin/env bash
# GPU benchmark for one run of <= 10 minutes on a machine with PyTorch installed and no network
# (issue 4, item 3). Writes gpu_bench.json (and a log) under $OUT, else benchmarks/results/.
#
#   bash benchmarks/gpu.sh                      # CUDA: N=64,128,256 x fp32/bf16-mixed x eager/compile
#   bash benchmarks/gpu.sh --device cpu --quick # smoke test on a CPU
#
# Extra arguments go to benchmarks/gpu_bench.py. The repository is put on PYTHONPATH, so nothing
# needs installing; the optional Lightning epoch is skipped (recorded as an error) without lightning.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-$REPO/benchmarks/results}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "# gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "$PYTHON" - <<'PY'
import platform
import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"cuda:{index} {props.name} {props.total_memory / 2**30:.0f} GiB")
else:
    print("no CUDA device visible")
PY
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    # stay inside one 10-minute call: the script itself skips what is left after --budget-s
    timeout 570 "$PYTHON" "$REPO/benchmarks/gpu_bench.py" --out "$OUT_DIR" --budget-s 420 "$@"
} 2>&1 | tee "$OUT_DIR/gpu_bench.log"
exit "${PIPESTATUS[0]}"
