# Shared by tests/ and bench/.
import importlib
import sys
import zlib
from pathlib import Path

import pytest
import torch

import fussfast

sys.path.insert(0, str(Path(__file__).parent / "tests"))
import simt_build  # noqa: E402

# The modules whose kernels the "simt" device reroutes to the emulator.
OP_MODULES = ("back_ce", "bilinear_sample", "cluster", "correlation", "kmeans", "maximin", "region_pool")


@pytest.fixture(scope="session")
def simt_kernels():
    """The SIMT emulation module: the CUDA kernels run on the CPU with their checks on."""
    simt_build.build("_C_simt")
    return simt_build.load("kernels")


@pytest.fixture(params=["cpu", "cpu-avx2", "cpu-generic", "cuda", "simt"])
def device(request):
    """Every kernel test runs on the CPU (with the best instruction set this CPU has, then with
    each lower one it can run: cpu-avx2, cpu-generic), under the SIMT emulator of the CUDA kernels
    (CPU tensors, CUDA code), and, where a GPU and the CUDA kernels exist, on CUDA."""
    if request.param.startswith("cpu-"):
        isa = request.param.removeprefix("cpu-")
        if request.node.path.parent.name == "bench":
            pytest.skip("benchmarks run the CPU's own instruction set (FUSSFAST_CPU_ISA forces another)")
        if isa not in fussfast._C.cpu_isas():
            pytest.skip(f"this CPU or build has no {isa} path")
        if isa == fussfast._C.cpu_isa():
            pytest.skip(f"{isa} is this CPU's default path, covered by the cpu case")
        previous = fussfast._C.cpu_isa()
        fussfast._C.set_cpu_isa(isa)
        request.addfinalizer(lambda: fussfast._C.set_cpu_isa(previous))
        return torch.device("cpu")
    if request.param == "cuda" and not fussfast.cuda_available():
        pytest.skip("needs a CUDA device and a CUDA build of fussfast")
    if request.param == "simt":
        if request.node.path.parent.name == "bench":
            pytest.skip("benchmarks time real devices, not the emulator")
        if request.node.get_closest_marker("no_simt"):
            pytest.skip(request.node.get_closest_marker("no_simt").args[0])
        module = request.getfixturevalue("simt_kernels")
        patch = request.getfixturevalue("monkeypatch")
        for name in OP_MODULES:
            patch.setattr(importlib.import_module(f"fussfast.ops.{name}"), "_C", module)
        # each case its own schedule, and both guard-page placements across the suite
        seed = zlib.crc32(request.node.nodeid.encode())
        module.simt_configure(seed=seed, placement="end" if seed % 2 else "start")
        return torch.device("cpu")
    return torch.device(request.param)


def pytest_configure(config):
    config.addinivalue_line("markers", "no_simt(reason): not run under the SIMT emulator")


def pytest_sessionfinish(session, exitstatus):
    # A run in which nothing passed (everything skipped or deselected) must not look green.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
