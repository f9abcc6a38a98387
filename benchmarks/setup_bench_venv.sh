#!/usr/bin/env bash
# Create the benchmark-only virtual environment (pty-chi + a torch/torchvision pair that load
# together). Kept out of the project's runtime dependencies. Idempotent: re-running only
# installs what is missing.
#
#   bash benchmarks/setup_bench_venv.sh            # venv at ../bench-venv
#   BENCH_VENV=/path/to/venv bash benchmarks/setup_bench_venv.sh
set -euo pipefail

VENV="${BENCH_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/bench-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# ptychi 2.2 imports torchvision.transforms.GaussianBlur; this torch/torchvision pair loads
# together (the PyPI torchvision wheel does not load beside the CPU torch 2.13.0 wheel).
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1" "ptychi==2.2.*"
"${PIP[@]}" install numpy scipy scikit-image matplotlib h5py lightning

# Our package, without re-resolving its dependencies (torch etc. are already here).
if [ -f "$REPO/pyproject.toml" ]; then
    "${PIP[@]}" install --no-deps -e "$REPO"
else
    echo "setup_bench_venv: $REPO/pyproject.toml not found yet; skipping our package" >&2
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

for dist in ("torch", "torchvision", "ptychi", "numpy", "scikit-image", "lightning"):
    print(f"{dist}=={md.version(dist)}")
PY
