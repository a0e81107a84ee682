"""Server aggregation against hand-computed results; FedCC keeps prototypes FedAvg collapses."""

import pytest
import torch

from fussfast.eval import confusion_matrix, hungarian_scores
from fussfast.fed import FedAvg, FedCC, FedProx, Update, check_update, make_strategy


def update(name, n, w, c):
    return Update(name, {"head.lin.weight": torch.tensor(w, dtype=torch.float64),
                         "centroids": torch.tensor(c, dtype=torch.float64)}, n)


CURRENT = {"head.lin.weight": torch.zeros(2, dtype=torch.float64), "centroids": torch.zeros(2, 1, dtype=torch.float64)}
A = update("a", 1, [1.0, 2.0], [[0.0], [10.0]])
B = update("b", 3, [5.0, 6.0], [[2.0], [20.0]])


def test_fedavg_weighted_and_uniform():
    out = FedAvg().aggregate(1, [A, B], CURRENT)
    assert out["head.lin.weight"].tolist() == [4.0, 5.0]  # (1*[1,2] + 3*[5,6]) / 4
    assert out["centroids"].tolist() == [[1.5], [17.5]]
    out = FedAvg(weighted=False).aggregate(1, [A, B], CURRENT)
    assert out["head.lin.weight"].tolist() == [3.0, 4.0] and out["centroids"].tolist() == [[1.0], [15.0]]


def test_local_parameter_groups_are_not_averaged():
    current = {**CURRENT, "centroids": torch.full((2, 1), 7.0, dtype=torch.float64)}
    out = FedAvg(local_params=("centroids",)).aggregate(1, [A, B], current)
    assert out["centroids"].tolist() == [[7.0], [7.0]] and out["head.lin.weight"].tolist() == [4.0, 5.0]
    out = FedAvg(local_params=("head",)).aggregate(1, [A, B], current)
    assert out["head.lin.weight"].tolist() == [0.0, 0.0]


def test_fedprox_term():
    params = {"head.lin.weight": torch.tensor([1.0, 2.0]), "head.mlp.0.weight": torch.tensor([3.0]),
              "centroids": torch.ones(1)}
    global_params = {"head.lin.weight": torch.tensor([0.0, 0.0]), "head.mlp.0.weight": torch.tensor([1.0]),
                     "centroids": torch.zeros(1)}
    assert float(FedProx(mu=0.5).client_penalty(params, global_params)) == pytest.approx(0.25 * (1 + 4 + 4))
    assert float(FedProx(mu=0.5, scope="mlp").client_penalty(params, global_params)) == pytest.approx(0.25 * 4)
    assert FedAvg().client_penalty(params, global_params) == 0
    with pytest.raises(ValueError, match="scope must be"):
        FedProx(scope="all")


def test_fedcc_maximin_by_hand():
    # pooled centroids [0, 10, 2, 20]; start at client 0 centroid 0 (0), then the farthest: 20
    out = FedCC(method="maximin").aggregate(1, [A, B], CURRENT)
    assert out["centroids"].tolist() == [[0.0], [20.0]]
    out = FedCC(method="kmeans").aggregate(1, [A, B], CURRENT)  # {0, 2} and {10, 20}
    assert sorted(out["centroids"].flatten().tolist()) == [1.0, 15.0]
    assert out["head.lin.weight"].tolist() == [4.0, 5.0]  # heads are still averaged


def test_fedcc_keeps_prototypes_that_fedavg_collapses():
    """Three clients see disjoint class subsets; each learns K centroids in its own order (and
    spends its spare ones near its own classes). FedAvg averages centroid k across clients and
    mixes unrelated classes; FedCC re-clusters the pool and keeps one centroid per class."""
    g = torch.Generator().manual_seed(0)
    K, D = 6, 16
    prototypes = torch.randn(K, D, generator=g, dtype=torch.float64) * 5
    updates = []
    for client, classes in enumerate(([0, 1], [2, 3], [4, 5])):
        cents = torch.stack([prototypes[classes[i % 2]] + 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
                             for i in range(K)])
        updates.append(Update(f"c{client}", {"centroids": cents[torch.randperm(K, generator=g)]}, 10))
    current = {"centroids": torch.zeros(K, D, dtype=torch.float64)}

    def hungarian_miou(centroids):
        # every class's points (its prototype plus noise) labelled by their nearest global centroid
        points = prototypes.repeat_interleave(50, 0) + 0.5 * torch.randn(K * 50, D, generator=g, dtype=torch.float64)
        truth = torch.arange(K).repeat_interleave(50)
        pred = torch.cdist(points, centroids).argmin(1)
        return hungarian_scores(confusion_matrix(pred, truth, K, K)).miou

    fedavg = hungarian_miou(FedAvg().aggregate(1, updates, current)["centroids"])
    kmeans_cc = hungarian_miou(make_strategy("fedcc-kmeans").aggregate(1, updates, current)["centroids"])
    maximin_cc = hungarian_miou(make_strategy("fedcc-maximin").aggregate(1, updates, current)["centroids"])
    # measured: FedCC-kMeans 100, FedCC-Maximin 100, FedAvg 49 (two classes per averaged centroid)
    assert kmeans_cc == pytest.approx(100) and maximin_cc == pytest.approx(100)
    assert fedavg < 60


def test_check_update_rejects_bad_uploads():
    assert check_update(A, CURRENT) is None
    nan = update("n", 1, [float("nan"), 0.0], [[0.0], [1.0]])
    assert "NaN or Inf" in check_update(nan, CURRENT)
    wrong = Update("w", {"head.lin.weight": torch.zeros(3, dtype=torch.float64), "centroids": torch.zeros(2, 1)}, 1)
    assert "has shape [3], expected [2]" in check_update(wrong, CURRENT)
    assert "missing ['centroids']" in check_update(Update("m", {"head.lin.weight": torch.zeros(2)}, 1), CURRENT)
    assert "no samples" in check_update(update("z", 0, [0.0, 0.0], [[0.0], [1.0]]), CURRENT)
    with pytest.raises(ValueError, match="no client updates"):
        FedAvg().aggregate(3, [], CURRENT)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("fedsgd")


def test_local_keeps_everything_and_moon_options():
    from fussfast.fed import Local, Moon

    out = Local().aggregate(1, [A, B], CURRENT)
    assert all(torch.equal(out[k], CURRENT[k]) for k in CURRENT) and Local().shared(CURRENT) == {}
    out = Moon(mu=2.0).aggregate(1, [A, B], CURRENT)  # FedAvg aggregation
    assert out["head.lin.weight"].tolist() == [4.0, 5.0]
    z = torch.randn(1, 3, 2, 2)
    assert float(Moon(mu=2.0).client_contrast(z, z, -z)) < float(Moon(mu=2.0).client_contrast(z, -z, z))
    assert FedAvg().client_contrast(z, z, z) is None
    with pytest.raises(ValueError, match="tau > 0"):
        Moon(tau=0)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("fedsgd")
