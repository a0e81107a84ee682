"""One local training step and one federated round with every op fused vs the pure-torch
references (``backend="fused"`` vs ``"reference"``), on the same cached-feature data.

Step: a SiteModel step (head forward on the batch and its kNN positives, correspondence loss,
cluster probe, backward, Adam) on ViT-S/8 features (C=384) at 28x28 (224 px) and 40x40 (320 px),
B=8, code dim 70, K=27. Round: 3 clients x 10 local steps, then FedCC-kMeans aggregation.
Without --benchmark-enable only the 28x28 step runs, once.
"""

import pytest
import torch

from _common import record, sync_for
from fussfast.fed import make_strategy
from fussfast.fed.client import Client
from fussfast.losses import CorrespondenceConfig
from fussfast.pipeline import FeatureSet, SiteModel

C, D, K, B = 384, 70, 27, 8


def site_data(n, side, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, C, side, side, generator=g).half()
    descriptors = torch.nn.functional.normalize(torch.randn(n, C, generator=g), dim=1)
    return FeatureSet(features, descriptors, torch.zeros(n, side, side, dtype=torch.int64))


def site_model(backend, device):
    torch.manual_seed(0)
    return SiteModel(C, D, K, loss=CorrespondenceConfig.preset("cityscapes"), backend=backend, device=device)


@pytest.mark.parametrize("method", ["fused", "reference"])
@pytest.mark.parametrize("side", [28, 40])
def bench_local_step(benchmark, device, side, method):
    if benchmark.disabled and side != 28:
        pytest.skip("smoke runs (no --benchmark-enable) cover the 28x28 step")
    client = Client("a", site_data(32, side, 0), site_model(method, device), local_steps=1, batch_size=B)
    strategy, sync = make_strategy("fedavg"), sync_for(device)
    arrays = client.model.arrays()
    generator = torch.Generator().manual_seed(0)

    def step():
        client.fit(arrays, strategy, generator)
        sync()

    step()  # warm-up: first-call allocations
    record(benchmark, op="local_step", device=device, case=f"B={B} {side}x{side} C={C} D={D} K={K}",
           method=method, mode="forward_backward", dtype=torch.float32)
    benchmark(step)


@pytest.mark.parametrize("method", ["fused", "reference"])
def bench_round(benchmark, device, method):
    if benchmark.disabled:
        pytest.skip("runs with --benchmark-enable only")
    clients = [Client(f"s{i}", site_data(32, 28, i), site_model(method, device), local_steps=10, batch_size=B)
               for i in range(3)]
    strategy, sync = make_strategy("fedcc-kmeans"), sync_for(device)
    state = {"arrays": clients[0].model.arrays()}
    generator = torch.Generator().manual_seed(0)

    def one_round():
        updates = [c.fit(state["arrays"], strategy, generator) for c in clients]
        state["arrays"] = strategy.aggregate(1, updates, state["arrays"])
        sync()

    record(benchmark, op="round", device=device, case=f"3 clients x 10 steps, B={B} 28x28, FedCC-kMeans",
           method=method, mode="forward_backward", dtype=torch.float32)
    benchmark.pedantic(one_round, rounds=3, iterations=1, warmup_rounds=1)
