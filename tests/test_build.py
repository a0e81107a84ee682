"""The extension's build facts and the `python -m fussfast info` command."""

import importlib.metadata
import os
import shutil
import subprocess
import re
import sys
from pathlib import Path

import pytest

import fussfast
from fussfast import _C

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_fields():
    info = fussfast.build_info()
    assert set(info) == {"version", "cuda_compiled", "cuda_archs", "cuda_runtime_version", "openmp",
                         "num_threads", "cpu_isa", "cpu_bf16", "cuda_verification"}
    assert "every kernel" in info["cuda_verification"]["simt_emulator"]
    assert info["version"] == importlib.metadata.version("fussfast") == fussfast.__version__
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["openmp"], bool)
    assert info["num_threads"] >= 1 and info["cpu_isa"] == fussfast._C.cpu_isa()
    if info["cuda_compiled"]:
        assert info["cuda_archs"] and all(isinstance(a, str) for a in info["cuda_archs"])
        major, minor = info["cuda_runtime_version"].split(".")
        assert int(major) >= 11 and int(minor) >= 0
    else:
        assert info["cuda_archs"] == [] and info["cuda_runtime_version"] is None


def test_cuda_is_compiled_when_nvcc_exists():
    # A broken CUDA build must not pass silently on a machine that has the compiler.
    if shutil.which("nvcc") is None or os.environ.get("FUSSFAST_CUDA", "auto").lower() == "off":
        pytest.skip("no nvcc on PATH, or CUDA disabled for this build")
    assert fussfast.build_info()["cuda_compiled"]


def test_info_command_runs_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-m", "fussfast", "info"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f"fussfast {fussfast.__version__}" in out
    assert "verified under the SIMT emulator: every kernel" in out and "verified on a GPU:" in out
    assert "cuda_compiled" in out and "torch" in out


def test_cpu_isa_choice_and_override():
    isas = _C.cpu_isas()
    assert isas[-1] == "generic" and set(isas) <= {"avx512", "avx2", "generic"}
    assert _C.cpu_isa() == os.environ.get("FUSSFAST_CPU_ISA") or _C.cpu_isa() == isas[0]
    previous = _C.cpu_isa()
    try:
        for isa in isas:
            _C.set_cpu_isa(isa)
            assert _C.cpu_isa() == isa == fussfast.build_info()["cpu_isa"]
    finally:
        _C.set_cpu_isa(previous)
    methods = _C.cpu_bf16_methods()
    assert methods[-1] == "widen" and _C.cpu_bf16() in methods
    with pytest.raises(ValueError, match="unknown bfloat16 method"):
        _C.set_cpu_bf16("fp8")
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        _C.set_cpu_isa("sse9")
    assert _C.cpu_isa() == previous  # a refused choice changes nothing
    for name in ("avx512", "avx2"):
        if name not in isas:
            with pytest.raises(ValueError, match="not (supported by this CPU|built into this module)"):
                _C.set_cpu_isa(name)


def test_cpu_isa_environment_variable():
    code = "from fussfast import _C; print(_C.cpu_isa())"
    env = dict(os.environ, FUSSFAST_CPU_ISA="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "generic", out.stderr
    env["FUSSFAST_CPU_ISA"] = "bogus"
    out = subprocess.run([sys.executable, "-m", "fussfast", "info"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "unknown CPU ISA 'bogus'" in out.stderr


def _disassembly(obj: Path) -> tuple[set[str], dict[str, str]]:
    """The weak (mergeable) function symbols of an object file, and each function's code."""
    text = subprocess.run(["objdump", "-d", "-t", "--no-show-raw-insn", str(obj)], capture_output=True,
                          text=True, check=True).stdout
    weak = set(re.findall(r"^[0-9a-f]+ +w +F \S+\s+[0-9a-f]+ (\S+)$", text, re.M))
    code, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            name = head.group(1)
        elif name:
            code[name] = code.get(name, "") + line + "\n"
    return weak, code


def test_no_vector_extension_leaks_out_of_its_build():
    # The generic build must run on any x86-64 CPU, and functions that the linker may merge across
    # builds (inline library code) must not carry AVX: a merged AVX copy would crash older CPUs.
    builds = sorted(ROOT.glob("build/*/CMakeFiles/fussfast_cpu_*.dir"))
    if not builds or shutil.which("objdump") is None:
        pytest.skip("needs the build folder of an editable install and objdump")
    avx = re.compile(r"%[yz]mm")
    for build in builds:
        objects = sorted(build.rglob("*.o"))
        assert objects, build
        for obj in objects:
            weak, code = _disassembly(obj)
            for name, body in code.items():
                if build.name == "fussfast_cpu_generic.dir" or name in weak:
                    assert not avx.search(body), f"{obj.relative_to(ROOT)}: {name} uses AVX registers"
