"""Prepare, on a machine with network, the folder of wheels `scripts/gpu_check.sh` installs from on
a GPU machine without one (Python 3.12, x86-64 Linux, torch and Triton already installed).

The folder holds every package of constraints.txt (the versions CI tests) except torch, Triton and
what torch's own wheels bring (wherever torch is, they are); megatron-ttt itself installs from
the checkout, editable, as on every machine. Given the
GPU machine's `python3 -m pip freeze` (--have), it leaves out what that machine already has in a
version the project accepts, which is what keeps the folder small.

    python3 scripts/gpu_wheels.py wheels/                     # everything but torch's closure
    python3 scripts/gpu_wheels.py wheels/ --have freeze.txt   # only what the GPU machine lacks
    python3 scripts/gpu_wheels.py wheels/ --have freeze.txt --fla   # and flash-linear-attention's ops

With --fla the folder also holds fla-core (flash-linear-attention's kernels, pure Python and
Triton): the GPU check then adds its `chunk_ttt_linear` to the kernel speed table.
"""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TORCH_CLOSURE = {"torch", "triton", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx", "sympy",
                 "typing-extensions", "setuptools"}
"""torch and what its wheels require: present wherever torch is, never carried."""
LIMIT_MIB = 64
FLA = "fla-core==0.6.0"
"""flash-linear-attention's kernels (it needs einops, which megatron-core brings too)."""
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform", "manylinux_2_28_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]


def pinned() -> dict[str, str]:
    """name -> the exact version of constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def accepted() -> dict[str, Requirement]:
    """name -> the project's own requirement (pyproject.toml's ranges, dev extra included)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def installed(freeze: Path) -> dict[str, str | None]:
    """name -> version of a `pip freeze`; a bare name (a package list without versions) is None.
    Comments, editable and URL lines are ignored."""
    have = {}
    for line in freeze.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e")) or " @ " in line:
            continue
        name, _, version = line.partition("==")
        have[canonicalize_name(name)] = version.split("+")[0].strip() or None
    return have


def needed(have: dict[str, str | None]) -> dict[str, str]:
    """The packages to carry: pinned ones outside torch's closure that the GPU machine lacks, or
    has in a version the project's range refuses or does not name (a package the project only
    needs through another one is kept in any version)."""
    ranges = accepted()
    carry = {}
    for name, version in pinned().items():
        if name in TORCH_CLOSURE:
            continue
        refused = name in ranges and (have.get(name) is None or Version(have[name]) not in ranges[name].specifier)
        if name not in have or refused:
            carry[name] = version
    return carry


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"])
    if done.returncode != 0:
        raise SystemExit(f"gpu_wheels.py: pip {' '.join(args[:2])} failed (exit {done.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--have", type=Path, help="the GPU machine's `python3 -m pip freeze`")
    parser.add_argument("--fla", action="store_true", help=f"also carry {FLA} for the kernel speed table")
    args = parser.parse_args()
    if args.have and not args.have.is_file():
        raise SystemExit(f"gpu_wheels.py: --have {args.have}: no such file (make it on the GPU machine with "
                         f"`python3 -m pip freeze > freeze.txt`)")
    args.folder.mkdir(parents=True, exist_ok=True)
    carry = needed(installed(args.have) if args.have else {})
    # DeepSpeed publishes only a source archive: built here into a pure-Python wheel (no ops).
    source_only = {"deepspeed"} & carry.keys()
    binary = [f"{n}=={v}" for n, v in carry.items() if n not in source_only] + ([FLA] if args.fla else [])
    if binary:
        pip("download", "--no-deps", "--only-binary=:all:", *TARGET, "-d", str(args.folder), *binary)
    for name in source_only:
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(args.folder), f"{name}=={carry[name]}")
    size = sum(f.stat().st_size for f in args.folder.glob("*.whl")) / 2**20
    print(f"{args.folder}: {len(list(args.folder.glob('*.whl')))} wheels, {size:.1f} MiB")
    if size > LIMIT_MIB:
        print(f"gpu_wheels.py: over {LIMIT_MIB} MiB; pass the GPU machine's `pip freeze` as --have to leave out "
              f"what it already has", file=sys.stderr)


if __name__ == "__main__":
    main()
