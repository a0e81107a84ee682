# Shared by tests/ and bench/.
import pytest
import torch

import fussfast


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Every kernel test runs on the CPU and, where a GPU and the CUDA kernels exist, on CUDA."""
    if request.param == "cuda" and not fussfast.cuda_available():
        pytest.skip("needs a CUDA device and a CUDA build of fussfast")
    return torch.device(request.param)


def pytest_sessionfinish(session, exitstatus):
    # A run in which nothing passed (everything skipped or deselected) must not look green.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and exitstatus == 0 and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
