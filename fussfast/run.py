"""``fussfast run``: a run from a config, with the non-federated baselines of the FUSS paper
(``centralized``: one site holds all the data; ``local``: every site trains alone)."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fussfast
from fussfast.data import synthetic_federation
from fussfast.data.datasets import (Subset, cityscapes27, cityscapes_sites, cocostuff27, dirichlet_split,
                                    folder_federation)
from fussfast.eval import hungarian_scores
from fussfast.fed import Update, check_update, make_strategy
from fussfast.losses import CorrespondenceConfig
from fussfast.model import FrozenBackbone, knn_table
from fussfast.pipeline import FeatureSet, SiteModel, extract, weights_digest


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, leave=False, disable=not sys.stderr.isatty())


def _scores(confusion) -> dict:
    s = hungarian_scores(confusion)
    return {"miou": s.miou, "acc": s.acc}


def majority_baseline(data: FeatureSet, num_classes: int) -> dict:
    """Scores of predicting the most frequent class everywhere."""
    masks = data.masks[(data.masks >= 0) & (data.masks < num_classes)]
    counts = torch.bincount(masks, minlength=num_classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion[int(counts.argmax())] = counts
    return _scores(confusion)


def make_data(data: dict, seed: int):
    """The sites' training datasets and the shared evaluation set of a config's ``data`` table."""
    size, eval_size, five = data["image_size"], data["eval_size"], data["crop"] == "five"
    if data["kind"] == "synthetic":
        sites, evaluation = synthetic_federation(
            num_sites=data["sites"], num_classes=data["num_classes"], images_per_site=data["images_per_site"],
            alpha=data["alpha"] or None, eval_images=data["eval_images"], image_size=size, seed=seed)
        evaluation.image_size = eval_size
        return sites, evaluation
    if data["kind"] == "folder":
        return folder_federation(data["root"], size, eval_size)
    if data["kind"] == "cityscapes":
        return cityscapes_sites(data["root"], data["split"], size, five), cityscapes27(data["root"], "val", eval_size)
    full = cocostuff27(data["root"], "train", size)
    masks = (full[i][1] for i in range(len(full)))
    dominant = np.array([int(torch.bincount(m[m >= 0], minlength=27).argmax()) for m in masks])
    parts = dirichlet_split(dominant, data["sites"], data["alpha"] or 1e6, seed)
    train = cocostuff27(data["root"], "train", size, five)
    crops = 5 if five else 1
    sites = {f"site{s}": Subset(f"site{s}", train, [i * crops + c for i in idx for c in range(crops)])
             for s, idx in enumerate(parts) if len(idx)}
    return sites, cocostuff27(data["root"], "val", eval_size)


def run(config: dict, out_dir: str | Path) -> dict:
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, data_cfg, model_cfg = config["seed"], config["data"], config["model"]
    K = data_cfg["num_classes"]
    device = torch.device("cuda" if config["device"] == "auto" and torch.cuda.is_available()
                          else "cpu" if config["device"] == "auto" else config["device"])
    torch.manual_seed(seed)
    backbone = FrozenBackbone(model_cfg["backbone"], weights=model_cfg["weights"],
                              precision=model_cfg["precision"]).to(device)
    sites, evaluation = make_data(data_cfg, seed)
    base_key = {"data": data_cfg, "seed": seed, "backbone": model_cfg["backbone"],
                "weights": weights_digest(model_cfg["weights"], seed), "precision": model_cfg["precision"]}
    cache = config["cache_dir"]

    def features(name, ds, flip):
        key = {**base_key, "split": name, "images": len(ds), "resolution": ds.image_size}
        return extract(backbone, ds, key, cache, device, flip=flip, progress=_progress(f"features {name}"))

    train = {name: features(name, ds, flip=True) for name, ds in sites.items()}
    shared = features("eval", evaluation, flip=True)
    t_features = time.perf_counter() - t0

    loss_cfg = CorrespondenceConfig.preset(config["loss"]["preset"],
                                           feature_samples=config["loss"]["feature_samples"])
    tcfg = config["train"]

    def new_model():
        return SiteModel(backbone.dim, model_cfg["code_dim"], K, loss=loss_cfg,
                         num_neighbors=config["loss"]["num_neighbors"], head_lr=tcfg["head_lr"],
                         probe_lr=tcfg["probe_lr"], backend=tcfg["backend"], device=device)

    strategy = config["fed"]["strategy"]
    generator = torch.Generator().manual_seed(seed)
    if strategy not in ("centralized", "local"):
        rounds = _federate(config, train, shared, new_model, generator, K)
        return _write(config, out_dir, device, shared, K, rounds, t0, t_features)
    if strategy == "centralized":
        # one site holding everything; kNN positives are still found within each site
        pooled = FeatureSet(torch.cat([d.features for d in train.values()]),
                            torch.cat([d.descriptors for d in train.values()]),
                            torch.cat([d.masks for d in train.values()]))
        tables, offset = [], 0
        for d in train.values():
            tables.append(knn_table(d.descriptors) + offset)
            offset += d.features.shape[0]
        width = min(t.shape[1] for t in tables)
        jobs = {"all": (new_model(), pooled, torch.cat([t[:, :width] for t in tables]))}
    else:
        jobs = {name: (new_model(), d, knn_table(d.descriptors)) for name, d in train.items()}

    rounds = []
    for r in range(config["fed"]["rounds"]):
        t = time.perf_counter()
        losses = {name: model.train_steps(data, table, tcfg["local_steps"], tcfg["batch_size"], generator)
                  for name, (model, data, table) in jobs.items()}
        if strategy == "centralized":
            model = jobs["all"][0]
            clients = {name: _scores(model.confusion(d, K)) for name, d in train.items()}
            global_scores = _scores(model.confusion(shared, K))
        else:
            clients = {name: _scores(jobs[name][0].confusion(d, K)) for name, d in train.items()}
            per_site = [_scores(jobs[name][0].confusion(shared, K)) for name in train]
            global_scores = {m: sum(s[m] for s in per_site) / len(per_site) for m in ("miou", "acc")}
        rounds.append({"round": r + 1, "global": global_scores, "clients": clients,
                       "loss": {name: sum(v) / len(v) for name, v in losses.items()},
                       "seconds": time.perf_counter() - t})
        print(f"round {r + 1}/{config['fed']['rounds']}: global mIoU {global_scores['miou']:.1f} "
              f"acc {global_scores['acc']:.1f}", file=sys.stderr)

    return _write(config, out_dir, device, shared, K, rounds, t0, t_features)


def _federate(config, train, shared, new_model, generator, K) -> list[dict]:
    """Rounds of FedAvg / FedProx / FedCC: every site starts from the global head and centroids,
    trains locally, uploads; the server leaves out bad updates (with the reason) and aggregates."""
    fed, tcfg = config["fed"], config["train"]
    options = {"weighted": fed["weighted"]}
    if fed["strategy"] == "fedprox":
        options.update(mu=fed["mu"], scope=fed["prox_scope"])
    if fed["strategy"].startswith("fedcc"):
        options.update(metric=fed["cc_metric"], seed=config["seed"])
    strategy = make_strategy(fed["strategy"], **options)
    models = {name: new_model() for name in train}
    global_model = new_model()
    current = global_model.arrays()
    tables = {name: knn_table(d.descriptors) for name, d in train.items()}
    rounds = []
    for r in range(fed["rounds"]):
        t = time.perf_counter()
        updates, excluded, losses = [], {}, {}
        global_head = {k.removeprefix("head."): v for k, v in current.items() if k.startswith("head.")}
        for name, model in models.items():
            model.load_arrays(current)
            anchor = {k: v.to(model.device) for k, v in global_head.items()}
            try:
                losses[name] = model.train_steps(train[name], tables[name], tcfg["local_steps"], tcfg["batch_size"],
                                                 generator, penalty=lambda p: strategy.client_penalty(p, anchor))
                update = Update(name, model.arrays(), train[name].features.shape[0])
                reason = check_update(update, current)
            except Exception as e:  # a failing site drops out of this round, the run goes on
                reason = f"{name}: failed with {type(e).__name__}: {e}"
            if reason:
                excluded[name] = reason
                print(f"round {r + 1}: left out {reason}", file=sys.stderr)
            else:
                updates.append(update)
        if len(updates) < fed["min_clients"]:
            raise RuntimeError(f"round {r + 1}: only {len(updates)} usable client updates, fewer than "
                               f"fed.min_clients={fed['min_clients']}: {excluded}")
        current = strategy.aggregate(r + 1, updates, current)
        global_model.load_arrays(current)
        size = sum(v.numel() * v.element_size() for v in current.values())
        clients = {name: _scores(global_model.confusion(d, K)) for name, d in train.items()}
        global_scores = _scores(global_model.confusion(shared, K))
        rounds.append({"round": r + 1, "global": global_scores, "clients": clients,
                       "loss": {name: sum(v) / len(v) for name, v in losses.items() if v},
                       "excluded": excluded,
                       "bytes": {name: {"down": size, "up": size if name not in excluded else 0} for name in models},
                       "seconds": time.perf_counter() - t})
        print(f"round {r + 1}/{fed['rounds']}: global mIoU {global_scores['miou']:.1f} "
              f"acc {global_scores['acc']:.1f}", file=sys.stderr)
    return rounds


def _write(config, out_dir, device, shared, K, rounds, t0, t_features) -> dict:
    metrics = {
        "config": config,
        "versions": {"fussfast": fussfast.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
        "baseline": {"majority": majority_baseline(shared, K)},
        "rounds": rounds,
        "final": {"global": rounds[-1]["global"], "clients": rounds[-1]["clients"]},
        "timings": {"features_s": t_features, "total_s": time.perf_counter() - t0},
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(out_dir / "metrics.json")
    return metrics
