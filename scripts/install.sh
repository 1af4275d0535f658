#!/usr/bin/env bash
# Idempotent install of megatron-ttt (editable) into .venv/ at the repository root.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh dev
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
extras=${1:+[$1]}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)

# torch first, at the version of constraints.txt, so no dependency ever pulls a default CUDA
# build. A torch already in the environment (a cluster's CUDA build) is kept, and so is the
# Triton it came with: the other pins still apply.
constraints="$root/constraints.txt"
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    grep -vE '^(torch|triton)==' "$root/constraints.txt" > "$venv/constraints-kept-torch.txt"
    constraints="$venv/constraints-kept-torch.txt"
else
    "${pip[@]}" -c "$constraints" torch
fi
# DeepSpeed's ops are JIT-compiled on first use; building them at install needs CUDA.
DS_BUILD_OPS=0 "${pip[@]}" -c "$constraints" -e "$root$extras"
# DeepSpeed JIT-compiles its CPU communication op on first use (~1 minute): once, here, into
# .venv/torch_extensions (where megatron_ttt.training.engine points it), not in the first run.
"$venv/bin/python" -c "import megatron_ttt.training.engine; from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
    >/dev/null 2>&1 || { echo "install.sh: building DeepSpeed's CPU communication op failed" >&2; exit 1; }
echo "installed megatron-ttt into $venv ($("$venv/bin/mttt" version))"
