#!/usr/bin/env bash
# Validate a GPU machine in one command, offline: install megatron-ttt (editable) into the
# environment of the Python that holds the machine's torch, Triton and CUDA, taking what that
# environment lacks from a folder of wheels made beforehand on a networked machine
# (scripts/gpu_wheels.py), then run benchmarks/gpu_check.py, which writes every result as JSON
# and a markdown table into OUT. Without a GPU the same steps run, those that need one skipped.
#
#     scripts/gpu_check.sh WHEELS OUT        e.g. scripts/gpu_check.sh wheels/ gpu-check/
#     PYTHON=/opt/env/bin/python3 scripts/gpu_check.sh ...   (the Python that holds torch)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=${1:?usage: scripts/gpu_check.sh WHEELS OUT}
out=${2:?usage: scripts/gpu_check.sh WHEELS OUT}
python=${PYTHON:-python3}

[ -d "$wheels" ] || { echo "gpu_check.sh: $wheels is not a folder (make it with scripts/gpu_wheels.py)" >&2; exit 2; }
"$python" -c "import torch, triton" 2>/dev/null \
    || { echo "gpu_check.sh: $python has no torch or no triton; set PYTHON to the one that does" >&2; exit 2; }
# pyproject's ranges keep every package already there that they accept: torch and Triton above all.
"$python" -m pip install --disable-pip-version-check --quiet --no-index --find-links "$wheels" \
    --no-build-isolation -e "$root[dev]"
# flash-linear-attention's kernels join the speed table where their wheel was carried (gpu_wheels.py --fla).
if compgen -G "$wheels/fla_core-*.whl" > /dev/null; then
    "$python" -m pip install --disable-pip-version-check --quiet --no-index --find-links "$wheels" fla-core
fi
exec "$python" "$root/benchmarks/gpu_check.py" --out "$out"
