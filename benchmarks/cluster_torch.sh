#!/usr/bin/env bash
# The oldest torch and Triton pyproject.toml admits, as a cluster brings them (torch 2.11's CUDA
# build with its Triton 3.6): install megatron-ttt into a venv that already holds them, with
# pyproject's ranges and no constraints (what a user's `pip install .` does), check that pip kept
# both, then run on them everything that needs no GPU: every fused kernel compiled for sm_80 and
# sm_90, and the kernel, op and model tests (the kernels in Triton's interpreter).
#
#     benchmarks/cluster_torch.sh [VENV]   (default /tmp/mttt-cluster-torch: about 5 GB, 10 minutes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-/tmp/mttt-cluster-torch}
cluster=(torch==2.11.0 triton==3.6.0)
# Triton 3.6's interpreter turns 1-element arrays into ints, which NumPy 2.4 refuses; a GPU never
# runs the interpreter, so only this CPU check needs the older NumPy.
interpreter=("numpy<2.4")

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
python="$venv/bin/python"
pip=("$python" -m pip install --disable-pip-version-check --quiet)
versions() { "$python" -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}')"; }

echo "== the cluster's torch: ${cluster[*]}"
"${pip[@]}" "${cluster[@]}" "${interpreter[@]}"
before=$(versions)
echo "== pip install -e $root[dev] (pyproject's ranges, no constraints)"
DS_BUILD_OPS=0 "${pip[@]}" -e "$root[dev]"
after=$(versions)
if [ "$before" != "$after" ]; then
    echo "cluster_torch.sh: installing megatron-ttt replaced the cluster's packages: $before -> $after" >&2
    exit 1
fi
echo "kept: $after"

cd "$root"
echo "== every kernel compiled for sm_80 and sm_90 under $after"
env -u TRITON_INTERPRET "$python" benchmarks/kernel_resources.py --ops linear,mlp --head-dims 64,128
echo "== kernel, op and model tests under $after"
"$python" -m pytest -q -p no:cacheprovider tests/kernels tests/ops tests/models
