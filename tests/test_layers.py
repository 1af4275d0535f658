"""Imports go one way, down the layers docs/architecture.md names; the config and the planner
load without the numerics."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
ROOTS = {"megatron_ttt": REPO / "megatron_ttt", "megatron_ttt.kernels": REPO / "kernels",
         "megatron_ttt.data_prep": REPO / "data_prep", "megatron_ttt.launchers": REPO / "launchers"}
LAYERS = [
    {"errors", "atomic", "run_options", "console"},
    {"kernels", "parallel", "data"},
    {"ops", "data_prep"},
    {"models"},
    {"config", "checkpoint"},
    {"training", "eval"},
    {"planning", "launch", "launchers"},
    {"cli"},
]
"""Bottom first; a module may import its own unit and units of lower layers only (the table in
docs/architecture.md)."""
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            out[".".join((prefix, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")] = path
    return out


def _unit(module: str) -> str | None:
    """megatron_ttt.models.block -> models; the package root itself (its version) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every megatron_ttt module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "megatron_ttt" or m.startswith("megatron_ttt.")}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} - {None}
    assert units <= set(RANK), f"give these a layer in LAYERS and docs/architecture.md: {sorted(units - set(RANK))}"


def test_no_module_imports_from_a_layer_above_or_beside_it():
    upward = []
    for module, path in _modules().items():
        unit = _unit(module)
        for imported in _imports(path):
            target = _unit(imported)
            if unit and target and target != unit and RANK[target] >= RANK[unit]:
                upward.append(f"{path.relative_to(REPO)} ({unit}, layer {RANK[unit]}) imports {imported} "
                              f"({target}, layer {RANK[target]})")
    assert not upward, "imports that climb the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", ["megatron_ttt.config", "megatron_ttt.planning.cli", "megatron_ttt.launch.cli",
                                    "megatron_ttt.checkpoint.run_dir", "megatron_ttt.models.presets"])
def test_configs_and_the_planner_load_without_the_numerics(module):
    """`mttt plan` and `mttt launch --dry-run` stay fast: no torch, Triton or DeepSpeed."""
    script = (f"import sys, {module}; "
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'triton', 'deepspeed', 'megatron'}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def test_process_groups_are_handed_out_never_looked_up():
    """megatron-core keeps its groups in module globals; only parallel/setup.py reads them, once,
    and hands them out (a ProcessGroupCollection) to whoever needs a group or its size."""
    readers = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(name.startswith("megatron.core.parallel_state") for name in names):
                readers.append(str(path.relative_to(REPO)))
    assert set(readers) <= {"megatron_ttt/parallel/setup.py"}, f"read megatron-core's global groups: {readers}"
