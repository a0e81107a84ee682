"""The extension's build facts and the `python -m fussfast info` command."""

import importlib.metadata
import os
import shutil
import subprocess
import sys

import fussfast


def test_build_info_fields():
    info = fussfast.build_info()
    assert set(info) == {"version", "cuda_compiled", "cuda_archs", "cuda_runtime_version", "openmp",
                         "num_threads", "cpu_isa", "cuda_verification"}
    assert "every kernel" in info["cuda_verification"]["simt_emulator"]
    assert info["version"] == importlib.metadata.version("fussfast") == fussfast.__version__
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["openmp"], bool)
    assert info["num_threads"] >= 1 and info["cpu_isa"] in ("avx2", "baseline")
    if info["cuda_compiled"]:
        assert info["cuda_archs"] and all(isinstance(a, str) for a in info["cuda_archs"])
        major, minor = info["cuda_runtime_version"].split(".")
        assert int(major) >= 11 and int(minor) >= 0
    else:
        assert info["cuda_archs"] == [] and info["cuda_runtime_version"] is None


def test_cuda_is_compiled_when_nvcc_exists():
    # A broken CUDA build must not pass silently on a machine that has the compiler.
    if shutil.which("nvcc") is None or os.environ.get("FUSSFAST_CUDA", "auto").lower() == "off":
        import pytest

        pytest.skip("no nvcc on PATH, or CUDA disabled for this build")
    assert fussfast.build_info()["cuda_compiled"]


def test_info_command_runs_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-m", "fussfast", "info"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f"fussfast {fussfast.__version__}" in out
    assert "verified under the SIMT emulator: every kernel" in out and "verified on a GPU:" in out
    assert "cuda_compiled" in out and "torch" in out
