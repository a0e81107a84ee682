"""Auto-K (fed.k_auto): the silhouette and the estimate on pooled centroids, the masked probe,
Hungarian scores with a cluster count other than the class count, the config rules, a run."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from fussfast.config import ConfigError, load_config
from fussfast.eval import hungarian_scores
from fussfast.fed.autok import distances, estimate_k, silhouette
from fussfast.fed.strategy import FedCC, Update
from fussfast.model import ClusterProbe
from fussfast.tasks import ACTIVE


def direct_silhouette(points: np.ndarray, labels: list[int], metric: str) -> float:
    """Rousseeuw's definition, one point at a time, float64."""
    def d(p, q):
        if metric == "cosine":
            return 1 - p @ q / (np.linalg.norm(p) * np.linalg.norm(q))
        return math.sqrt(((p - q) ** 2).sum())

    values = []
    for i, p in enumerate(points):
        own = [j for j in range(len(points)) if labels[j] == labels[i] and j != i]
        if not own:
            values.append(0.0)
            continue
        a = sum(d(p, points[j]) for j in own) / len(own)
        b = min(sum(d(p, points[j]) for j in range(len(points)) if labels[j] == c) /
                sum(1 for x in labels if x == c) for c in set(labels) if c != labels[i])
        values.append((b - a) / max(a, b))
    return sum(values) / len(values)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_matches_the_direct_formula(metric):
    g = torch.Generator().manual_seed(7)
    points = torch.randn(13, 5, generator=g)
    labels = torch.tensor([0, 0, 0, 4, 4, 4, 4, 2, 2, 2, 2, 2, 6])  # a singleton and unused label values
    got = silhouette(distances(points, metric), labels)
    assert got == pytest.approx(direct_silhouette(points.double().numpy(), labels.tolist(), metric), abs=1e-10)
    assert math.isnan(silhouette(distances(points, metric), torch.zeros(13, dtype=torch.int64)))


def groups(n_groups: int, per_group: int, dim: int, seed: int, spread: float = 0.05) -> torch.Tensor:
    """Well-separated groups: random unit directions, points scattered tightly around each."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_groups, dim, generator=g), dim=1) * 3
    points = centres.repeat_interleave(per_group, 0) + spread * torch.randn(n_groups * per_group, dim, generator=g)
    return points[torch.randperm(len(points), generator=g)]


@pytest.mark.parametrize("method,metric,n_groups", [("kmeans", "euclidean", 5), ("kmeans", "cosine", 7),
                                                    ("maximin", "euclidean", 4), ("maximin", "cosine", 6)])
def test_estimate_finds_the_number_of_groups(method, metric, n_groups):
    points = groups(n_groups, 3, 9, seed=n_groups)
    found = estimate_k(points, 2, 11, method=method, metric=metric, seed=1)
    assert found.k == n_groups and found.centroids.shape == (n_groups, 9)
    assert sorted(found.criterion) == list(range(2, 12))
    # the silhouette peaks at the truth; a criterion that grows with K (minus inertia) would take 11
    assert found.criterion[n_groups] == max(found.criterion.values())
    assert found.criterion[11] < found.criterion[n_groups] - 0.2


def test_estimate_bounds():
    points = groups(5, 3, 4, seed=3)
    assert estimate_k(points, 2, 3).k == 3  # the best allowed: the range is respected
    assert estimate_k(points, 6, 11).k >= 6
    assert estimate_k(points[:3], 2, 8).criterion.keys() == {2}  # K <= M - 1
    lone = estimate_k(points[:2], 2, 8)
    assert lone.k == 2 and lone.criterion == {}
    with pytest.raises(ValueError, match="k_min"):
        estimate_k(points, 1, 4)


def test_fedcc_auto_k_aggregates_into_the_active_slots():
    pooled = groups(3, 2, 6, seed=4)  # two sites, each holding 3 active centroids of the 3 groups
    order = torch.argsort(pooled[:, 0])
    slots = torch.randn(8, 6)
    current = {"head.w": torch.zeros(2), "centroids": slots, ACTIVE: torch.tensor([3])}
    updates = [Update(f"s{i}", {"head.w": torch.full((2,), float(i)),
                                "centroids": torch.cat([pooled[order][i::2], torch.randn(5, 6)]),
                                ACTIVE: torch.tensor([3])}, 1) for i in range(2)]
    strategy = FedCC(method="kmeans", auto_k=True, k_min=2, weighted=False)
    out = strategy.aggregate(1, updates, current)
    # 3 distinct slots: no merge reaches the threshold, all 3 are kept (K = 3 scored the threshold)
    assert list(out) == list(current) and int(out[ACTIVE][0]) == 3 == strategy.round_notes()["k_estimate"]
    criterion = strategy.round_notes()["k_criterion"]
    assert sorted(criterion) == ["2", "3"] and criterion["2"] < 0.5 == criterion["3"]
    torch.testing.assert_close(out["centroids"][3:], slots[3:])  # the inactive slots stay
    torch.testing.assert_close(out["head.w"], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="local_params"):
        FedCC(auto_k=True, local_params=("centroids",))


def slot_aligned(sites: int, concepts: int, copies: int, dim: int, seed: int) -> list[torch.Tensor]:
    """What sites send after round 1: ``concepts * copies`` slots, slot j of every site near the
    same global slot j (site noise 0.001: they barely move it); the ``copies`` slots of one
    concept near-duplicates (spread 0.15 around a concept 3 from the origin), order interleaved."""
    g = torch.Generator().manual_seed(seed)
    concept = torch.nn.functional.normalize(torch.randn(concepts, dim, generator=g), dim=1) * 3
    slot = concept.repeat(copies, 1) + 0.15 * torch.randn(concepts * copies, dim, generator=g)
    return [slot + 0.001 * torch.randn(slot.shape, generator=g) for _ in range(sites)]


@pytest.mark.parametrize("method", ["kmeans", "maximin"])
@pytest.mark.parametrize("concepts,copies", [(4, 2), (3, 3), (8, 1)])
def test_fedcc_auto_k_merges_near_duplicate_slots(method, concepts, copies):
    k_max, dim = concepts * copies, 16
    sent = slot_aligned(4, concepts, copies, dim, seed=concepts)
    current = {"centroids": torch.zeros(k_max, dim), ACTIVE: torch.tensor([k_max])}
    updates = [Update(f"s{i}", {"centroids": c, ACTIVE: torch.tensor([k_max])}, 1) for i, c in enumerate(sent)]
    strategy = FedCC(method=method, auto_k=True, k_min=2, weighted=False, seed=1)
    out = strategy.aggregate(2, updates, current)
    assert int(out[ACTIVE][0]) == concepts == strategy.round_notes()["k_estimate"]
    pooled = torch.cat(sent)
    if copies > 1:
        # the pooled-points estimator (the old rule) sees k_max tight groups of slot copies
        assert estimate_k(pooled, 2, k_max, method=method, seed=1).k == k_max
        # each merged centre is near one concept's slots: the concepts are found, not just counted
        concept_of = torch.arange(k_max) % concepts
        nearest = torch.cdist(sent[0], out["centroids"][:concepts]).argmin(1)
        assert all(len(set(nearest[concept_of == c].tolist())) == 1 for c in range(concepts))
        assert len(set(nearest.tolist())) == concepts
    else:  # nothing to merge: exactly plain FedCC's aggregation with k_max clusters
        torch.testing.assert_close(out["centroids"], strategy.combine_centroids(sent, updates).float())


def test_keep_threshold():
    points = groups(3, 1, 6, seed=4)  # 3 distinct points: merging two of them is poor
    kept = estimate_k(points, 2, 3, keep_below=0.5)
    assert kept.k == 3 and kept.criterion[3] == 0.5 and kept.criterion[2] < 0.5
    torch.testing.assert_close(kept.centroids, points)
    assert estimate_k(points, 2, 3, keep_below=-1.0).k == 2  # any merge beats a threshold of -1
    assert estimate_k(points, 2, 3).criterion.keys() == {2}  # no threshold: K <= M - 1 as before
    assert estimate_k(points[:2], 2, 2, keep_below=0.5).k == 2  # M = k_min: nothing to choose


def test_probe_uses_only_its_active_centroids():
    probe = ClusterProbe(5, 7, backend="reference")
    probe.active = 3
    codes = torch.randn(2, 5, 3, 5)
    loss, probs = probe(codes)
    loss.backward()
    assert probs.shape[1] == 3 and probe.labels(codes).max() < 3
    assert probe.clusters.grad[3:].abs().sum() == 0 and probe.clusters.grad[:3].abs().sum() > 0
    assert probe(codes, 2.0, log_probs=True).shape[1] == 3


def brute_force_scores(hist: np.ndarray):
    """Best one-to-one matching by trying every assignment; IoU of class k = TP / (pixels of k +
    pixels predicted k − TP), a pixel predicted k when its cluster is matched to k."""
    clusters, classes = hist.shape
    best = None
    for chosen in itertools.permutations(range(clusters), min(clusters, classes)):
        for cls in itertools.permutations(range(classes), len(chosen)):
            total = sum(hist[c, k] for c, k in zip(chosen, cls))
            if best is None or total > best[0]:
                best = (total, dict(zip(cls, chosen)))
    iou = []
    for k in range(classes):
        tp = hist[best[1][k], k] if k in best[1] else 0.0
        predicted = hist[best[1][k]].sum() if k in best[1] else 0.0
        union = hist[:, k].sum() + predicted - tp
        iou.append(tp / union if union else float("nan"))
    return np.nanmean(iou) * 100, best[0] / hist.sum() * 100


@pytest.mark.parametrize("clusters,classes", [(5, 3), (2, 4), (3, 3)])
def test_hungarian_scores_with_other_cluster_counts(clusters, classes):
    rng = np.random.default_rng(clusters * 10 + classes)
    hist = rng.integers(0, 20, size=(clusters, classes)).astype(np.float64)
    s = hungarian_scores(torch.from_numpy(hist))
    miou, acc = brute_force_scores(hist)
    assert s.miou == pytest.approx(miou) and s.acc == pytest.approx(acc)


def test_unmatched_cluster_pixels_are_false_negatives():
    hist = torch.tensor([[10, 0], [0, 10], [0, 10]])  # class 1 is split over two clusters
    s = hungarian_scores(hist)
    assert s.iou == [100.0, 50.0]  # 10 of class 1's 20 pixels are in the unmatched cluster


TINY = ["data.sites=2", "data.images_per_site=8", "data.eval_images=6", "data.image_size=32", "data.eval_size=32",
        "train.local_steps=3", "model.precision=\"fp32\"", "data.num_classes=3"]


@pytest.mark.parametrize("overrides,message", [
    (["fed.strategy=\"fedavg\""], "fed.k_auto"),
    (["fed.strategy=\"fedavg\"", "task=\"supervised\""], "fed.k_auto"),
    (["fed.strategy=\"fedcc-kmeans\"", "fed.k_min=5", "fed.k_max=4"], "fed.k_max"),
    (["fed.strategy=\"fedcc-kmeans\"", "fed.k_min=7"], "fed.k_max"),  # 0: twice data.num_classes = 6
    (["fed.strategy=\"fedcc-kmeans\"", "fed.local_params=[\"centroids\"]"], "fed.k_auto"),
    (["fed.strategy=\"fedcc-kmeans\"", "fed.k_min=1"], "fed.k_min"),
])
def test_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, TINY + ["fed.k_auto=true", *overrides])


def test_auto_k_run(tmp_path, capsys):
    from fussfast.report import write_report
    from fussfast.run import run

    config = load_config(None, TINY + ["fed.strategy=\"fedcc-maximin\"", "fed.k_auto=true", "fed.rounds=2",
                                       f"cache_dir=\"{tmp_path / 'c'}\""])
    metrics = run(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for r in saved["rounds"]:
        assert 2 <= r["k_estimate"] <= 6 and r["excluded"] == {}
        assert r["k_estimate"] == int(max(r["k_criterion"], key=lambda k: (r["k_criterion"][k], -int(k))))
    assert saved["rounds"] == json.loads(json.dumps(metrics["rounds"]))
    assert f"K̂ {saved['rounds'][-1]['k_estimate']}" in capsys.readouterr().err
    page = write_report({"auto": tmp_path / "run"}, tmp_path / "report.html").read_text()
    assert "Automatic class count" in page and "auto-K in [2, 6]" in page
