"""Builds and loads the test-only SIMT emulation of the CUDA kernels (csrc/testing/simt).

The module is compiled with CMake into build/simt (incremental after the first build, about a
minute on two cores) and loaded from its folder: `kernels` holds the kernels as written,
`mutant_<n>` the build in which one kernel carries mutation n of csrc/common/launch.h.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "testing" / "simt"
BUILD = ROOT / "build" / "simt"


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")


def build(*targets: str) -> None:
    """Configures build/simt once and builds the given targets (default: _C_simt)."""
    if shutil.which("cmake") is None:
        raise RuntimeError("the SIMT tests need cmake (pip install -e '.[test]' brings it)")
    if not (BUILD / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", str(SOURCE), "-B", str(BUILD), *generator, f"-DPython_EXECUTABLE={sys.executable}"])
    _run(["cmake", "--build", str(BUILD), "--parallel", "--target", *(targets or ("_C_simt",))])


def load(folder: str = "kernels"):
    """The built module of build/simt/<folder>, imported under the name _C_simt."""
    (path,) = (BUILD / folder).glob("_C_simt*.so")
    spec = importlib.util.spec_from_file_location("_C_simt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
