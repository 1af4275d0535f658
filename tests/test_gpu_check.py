"""The GPU check end to end on the CPU (its GPU steps skipped), and what its wheel folder carries."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wheel_folder_carries_only_what_the_gpu_machine_lacks_or_has_too_old(tmp_path):
    gpu_wheels = _gpu_wheels()
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# a GPU machine's pip freeze\ntorch==2.11.0+cu130\ntriton==3.6.0\nsentencepiece==0.2.2\n"
                      "tqdm==4.70.1\npillow==9.0.0\nmatplotlib\n-e git+https://example.org/x.git#egg=x\n")
    carry = gpu_wheels.needed(gpu_wheels.installed(freeze))
    assert "torch" not in carry and "triton" not in carry and "sympy" not in carry  # torch brings these
    assert carry["sentencepiece"] == "0.2.3"  # below pyproject's range
    assert "tqdm" not in carry  # accepted as it is
    assert "pillow" not in carry  # needed only through matplotlib: any version is kept
    assert "matplotlib" in carry  # a direct requirement of unknown version
    assert "megatron-core" in carry and "deepspeed" in carry  # missing


def test_a_missing_freeze_file_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_wheels.py"), str(tmp_path / "w"), "--have",
                           str(tmp_path / "nope.txt")], capture_output=True, text=True)
    assert done.returncode != 0 and "nope.txt: no such file" in done.stderr


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_with_its_gpu_steps_skipped(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()  # everything is installed already: pip needs nothing from it
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(wheels), str(out)],
                          env=os.environ | {"PYTHON": sys.executable, "MTTT_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    status = {s["step"]: s["status"] for s in results["steps"]}
    assert status == {"kernel_tests": "skipped: no GPU", "kernel_speed": "skipped: no GPU", "pretrain": "passed",
                      "planner_memory": "passed"}
    pretrain = json.loads((out / "pretrain.json").read_text())
    assert [(r["layer_type"], r["variant"]) for r in pretrain] == [("linear", "torch")]  # one row of each step on a CPU
    assert all(0 < r["mfu"] < 1 for r in pretrain)
    assert len(json.loads((out / "planner_memory.json").read_text())) == 1
    report = (out / "README.md").read_text()
    assert "## mttt pretrain" in report and "## Planner memory" in report
