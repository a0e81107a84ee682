"""One local training step and one federated round with every op fused vs the pure-torch
references (``backend="fused"`` vs ``"reference"``), on the same cached-feature data.

Step: a SiteModel step (head forward on the batch and its kNN positives, correspondence loss,
cluster probe, backward, Adam) on ViT-S/8 features (C=384) at 28x28 (224 px) and 40x40 (320 px),
B=8, code dim 70, K=27. Round: 3 clients x 10 local steps, then FedCC-kMeans aggregation.
Supervised (FedSeg) local round: the region memory of 32 images, then 10 steps of BackCE at
224x224 labels + pixel-to-region contrast, K=19, a site annotating 2 classes.
Methods: ``fused`` is fussfast as the default run sets it up on this machine (the head's
products in ``model.head_precision = "auto"``: bf16 on a CPU with native bf16); ``fused_fp32``
the same with fp32 products; ``reference`` the pure-torch loop in fp32, as STEGO trains;
``reference_bf16`` that loop with the same bf16 head (a researcher's best plain-torch setup).
Features are cached in the backbone's auto precision for the device, as the default run caches them.
Without --benchmark-enable the 28x28 step and one supervised step run, once.
"""

import pytest
import torch

from _common import record, sync_for
from fussfast.features import FeatureSet
from fussfast.fed import make_strategy
from fussfast.fed.client import Client
from fussfast.losses import CorrespondenceConfig
from fussfast.model.backbone import PRECISIONS, resolve_head_precision, resolve_precision
from fussfast.tasks import SiteModel, SupervisedModel

C, D, K, B = 384, 70, 27, 8
METHODS = {"fused": ("fused", "auto"), "fused_fp32": ("fused", "fp32"), "reference": ("reference", "fp32"),
           "reference_bf16": ("reference", "bf16")}


def backend_and_head(method, device):
    """(backend, head compute dtype or None) of a method on device."""
    backend, precision = METHODS[method]
    return backend, torch.bfloat16 if resolve_head_precision(precision, device) == "bf16" else None


def feature_dtype(device):
    return PRECISIONS[resolve_precision("auto", device)]


def site_data(n, side, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, C, side, side, generator=g).to(feature_dtype(device))
    descriptors = torch.nn.functional.normalize(torch.randn(n, C, generator=g), dim=1)
    return FeatureSet(features, descriptors, torch.zeros(n, side, side, dtype=torch.int64))


def site_model(method, device):
    torch.manual_seed(0)
    backend, head_dtype = backend_and_head(method, device)
    return SiteModel(C, D, K, loss=CorrespondenceConfig.preset("cityscapes"), backend=backend, head_dtype=head_dtype,
                     device=device)


def features_note(device):
    return f", features {str(feature_dtype(device)).removeprefix('torch.')}"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("side", [28, 40])
def bench_local_step(benchmark, device, side, method):
    if benchmark.disabled and (side != 28 or method.endswith("bf16")):
        pytest.skip("smoke runs (no --benchmark-enable) cover the 28x28 step")
    client = Client("a", site_data(32, side, 0, device), site_model(method, device), local_steps=1, batch_size=B)
    strategy, sync = make_strategy("fedavg"), sync_for(device)
    arrays = client.model.arrays()
    generator = torch.Generator().manual_seed(0)

    def step():
        client.fit(arrays, strategy, generator)
        sync()

    step()  # warm-up: first-call allocations
    record(benchmark, op="local_step", device=device,
           case=f"B={B} {side}x{side} C={C} D={D} K={K}{features_note(device)}",
           method=method, mode="forward_backward", dtype=torch.float32)
    benchmark(step)


@pytest.mark.parametrize("method", list(METHODS))
def bench_round(benchmark, device, method):
    if benchmark.disabled:
        pytest.skip("runs with --benchmark-enable only")
    clients = [Client(f"s{i}", site_data(32, 28, i, device), site_model(method, device), local_steps=10,
                      batch_size=B) for i in range(3)]
    strategy, sync = make_strategy("fedcc-kmeans"), sync_for(device)
    state = {"arrays": clients[0].model.arrays()}
    generator = torch.Generator().manual_seed(0)

    def one_round():
        updates = [c.fit(state["arrays"], strategy, generator) for c in clients]
        state["arrays"] = strategy.aggregate(1, updates, state["arrays"])
        sync()

    record(benchmark, op="round", device=device,
           case=f"3 clients x 10 steps, B={B} 28x28, FedCC-kMeans{features_note(device)}",
           method=method, mode="forward_backward", dtype=torch.float32)
    benchmark.pedantic(one_round, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("method", list(METHODS))
def bench_supervised_round(benchmark, device, method):
    if benchmark.disabled and method.endswith("bf16"):
        pytest.skip("smoke runs (no --benchmark-enable) cover the fused and reference steps")
    n, side, size, classes = 32, 28, 224, 19
    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(n, C, side, side, generator=g).to(feature_dtype(device)), torch.zeros(n, C),
                      torch.randint(0, classes, (n, size // 16, size // 16), generator=g)
                      .repeat_interleave(16, 1).repeat_interleave(16, 2))  # 16x16-pixel label blocks
    data.labelled = torch.zeros(n, classes, dtype=torch.bool)
    data.labelled[:, :2] = True
    torch.manual_seed(0)
    backend, head_dtype = backend_and_head(method, device)
    model = SupervisedModel(C, classes, objective="backce+contrast", backend=backend, head_dtype=head_dtype,
                            device=device)
    steps = 10 if not benchmark.disabled else 1
    client = Client("a", data, model, local_steps=steps, batch_size=B, table=torch.zeros(n, 1, dtype=torch.int64))
    strategy, sync = make_strategy("fedavg"), sync_for(device)
    arrays = model.arrays()
    generator = torch.Generator().manual_seed(0)

    def local_round():
        client.fit(arrays, strategy, generator)
        sync()

    local_round()  # warm-up
    record(benchmark, op="supervised_round", device=device,
           case=f"memory of {n} images + {steps} steps, B={B} {side}x{side} -> {size}x{size}, K={classes}"
                f"{features_note(device)}",
           method=method, mode="forward_backward", dtype=torch.float32)
    benchmark.pedantic(local_round, rounds=5, iterations=1, warmup_rounds=0)
