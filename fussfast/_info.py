"""What this build of the extension contains, and what the machine offers."""

from __future__ import annotations

from typing import Any

from fussfast import _C

# What has run this source tree's CUDA kernels and matched the references (README, "CUDA
# status"). Update it when a GPU run of bench/gpu_check.sh lands under bench/results/.
CUDA_VERIFICATION = {
    "simt_emulator": "every kernel, in CI: the simt case of each op's tests and tests/test_simt.py "
    "(several schedules; race, barrier, warp-mask, bounds and uninitialized-shared checks)",
    "gpu": None,  # no GPU run yet
}


def build_info() -> dict[str, Any]:
    """Facts about the compiled extension.

    Keys: ``version``, ``cuda_compiled`` (CUDA kernels were built), ``cuda_archs`` (CMake
    architecture list, e.g. ``["80-real", "90-real", "90-virtual"]``), ``cuda_runtime_version``
    (the CUDA runtime the kernels were built against, or None), ``openmp`` and ``num_threads``
    (OpenMP threads the CPU kernels use; set ``OMP_NUM_THREADS`` to change it), and ``cpu_isa``
    (``"avx512"``, ``"avx2"`` or ``"generic"``: the build of the CPU kernels that runs, the best
    this CPU has unless ``FUSSFAST_CPU_ISA`` says otherwise), ``cpu_bf16`` (how bfloat16 operands
    are multiplied: ``"amx"`` tiles, ``"avx512bf16"`` or ``"widen"`` to float32; ``FUSSFAST_CPU_BF16``
    overrides), and
    ``cuda_verification``: what has run the CUDA kernels of this source tree and matched the
    references (the SIMT emulator in CI; a GPU, naming it, once one has).
    """
    return dict(_C.build_info(), cuda_verification=dict(CUDA_VERIFICATION))


def cuda_available() -> bool:
    """True when this build has CUDA kernels and torch sees a GPU to run them on."""
    import torch

    return bool(_C.build_info()["cuda_compiled"]) and torch.cuda.is_available()


def runtime_report() -> str:
    """build_info() plus torch and the visible devices, as printed by `python -m fussfast info`."""
    import torch

    info = build_info()
    lines = [f"fussfast {info['version']}"]
    for key in ("cuda_compiled", "cuda_archs", "cuda_runtime_version", "openmp", "num_threads", "cpu_isa", "cpu_bf16"):
        lines.append(f"  {key}: {info[key]}")
    checked = info["cuda_verification"]
    lines.append(f"  CUDA kernels verified under the SIMT emulator: {checked['simt_emulator']}")
    lines.append(f"  CUDA kernels verified on a GPU: {checked['gpu'] or 'not yet (no GPU run recorded)'}")
    lines.append(f"torch {torch.__version__} (built with CUDA {torch.version.cuda})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"  cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
        if not info["cuda_compiled"]:
            lines.append("  note: a GPU is visible but this build has no CUDA kernels")
    else:
        lines.append("  no CUDA device visible: CPU kernels only")
    return "\n".join(lines)
