"""The correlation op's matrix-product core against this machine's GEMM rate (torch/oneDNN).

The core's rate is estimated from the feature product's FLOPs (2 B P Q C) over the extra time the
op takes for C = 384 channels against C = 8 (everything but the product is the same), forward
only, codes without gradient. The machine's rate is torch.matmul of the same shapes. Run:
    python bench/gemm_rate.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fussfast import _C
from fussfast.ops import correlation_loss


def median_ms(fn, repeats=9):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, P, D = 8, args.side**2, 70
    print(f"cpu_isa={_C.cpu_isa()} cpu_bf16={_C.cpu_bf16()} threads={args.threads} B={B} P=Q={P} C=384")
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)

        def op_ms(C):
            f1, f2 = (torch.randn(B, C, args.side, args.side, generator=g).to(dtype) for _ in range(2))
            z1, z2 = (torch.randn(B, D, args.side, args.side, generator=g) for _ in range(2))
            return median_ms(lambda: correlation_loss(f1, f2, z1, z2, 0.1))

        flops = 2 * B * P * P * 384
        core = flops / ((op_ms(384) - op_ms(8)) * 1e-3) / 1e9
        a, b = torch.randn(B, P, 384).to(dtype), torch.randn(B, 384, P).to(dtype)
        machine = flops / (median_ms(lambda: torch.matmul(a, b)) * 1e-3) / 1e9
        name = str(dtype).removeprefix("torch.")
        print(f"{name}: correlation core {core:.0f} GFLOP/s, torch.matmul {machine:.0f} GFLOP/s "
              f"({100 * core / machine:.0f} %)")


if __name__ == "__main__":
    main()
