"""``fussfast run``: a federation from a config, unsupervised (FUSS) or supervised (FedSeg,
``task = "supervised"``). Besides the federated strategies, the FUSS paper's baselines:
``centralized`` (one site holds all the data) and ``local`` (every site trains alone)."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import fussfast
from fussfast.data import synthetic_federation
from fussfast.data.datasets import (Subset, cityscapes27, cityscapes_sites, class_erased_split, cocostuff27,
                                    dirichlet_split, erased_site_classes, folder_federation)
from fussfast.config import ConfigError
from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD
from fussfast.eval import hungarian_scores, scores
from fussfast.fed import Strategy, make_strategy
from fussfast.fed.client import Client
from fussfast.fed.loop import Federation
from fussfast.losses import CorrespondenceConfig, RegionContrast
from fussfast.model import FrozenBackbone, knn_table
from fussfast.pipeline import FeatureSet, SiteModel, SupervisedModel, extract, weights_digest


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, leave=False, disable=not sys.stderr.isatty())


def majority_baseline(data: FeatureSet, num_classes: int) -> dict:
    """Scores of predicting the most frequent class everywhere."""
    masks = data.masks[(data.masks >= 0) & (data.masks < num_classes)]
    counts = torch.bincount(masks, minlength=num_classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion[int(counts.argmax())] = counts
    return scores(confusion)


def make_data(data: dict, seed: int):
    """The sites' training datasets, the shared evaluation set, and the classes each site
    annotates (None: all; only class-erased splits erase labels) of a config's ``data`` table."""
    size, eval_size, five = data["image_size"], data["eval_size"], data["crop"] == "five"
    K, erased = data["num_classes"], data["split"] == "class-erased"
    labelled = erased_site_classes(data["sites"], K, data["classes_per_site"]) if erased else None
    if data["kind"] == "synthetic":
        probs = None
        if erased:  # every site sees every class; half its pixels are of the classes it annotates
            probs = [np.where(np.isin(np.arange(K), own), 0.5 / len(own), 0.5 / max(K - len(own), 1))
                     for own in labelled]
        sites, evaluation = synthetic_federation(
            num_sites=data["sites"], num_classes=K, images_per_site=data["images_per_site"],
            alpha=data["alpha"] or None, class_probs=probs, eval_images=data["eval_images"], image_size=size,
            seed=seed)
        evaluation.image_size = eval_size
    elif data["kind"] == "folder":
        sites, evaluation = folder_federation(data["root"], size, eval_size)
    elif data["kind"] == "cityscapes":
        evaluation = cityscapes27(data["root"], "val", eval_size, num_classes=K)
        if erased:
            train = cityscapes27(data["root"], "train", size, five_crop=five, num_classes=K)
            image_classes = [train.classes(i) for i in range(0, len(train), train.crops)]
            sites = _image_sites(train, class_erased_split(image_classes, labelled, seed))
        else:
            sites = cityscapes_sites(data["root"], data["split"], size, five, num_classes=K)
    else:
        full = cocostuff27(data["root"], "train", size)
        masks = (full[i][1] for i in range(len(full)))
        dominant = np.array([int(torch.bincount(m[m >= 0], minlength=27).argmax()) for m in masks])
        parts = dirichlet_split(dominant, data["sites"], data["alpha"] or 1e6, seed)
        sites = {k: v for k, v in _image_sites(cocostuff27(data["root"], "train", size, five), parts).items() if len(v)}
        evaluation = cocostuff27(data["root"], "val", eval_size)
    if labelled is not None:
        empty = [name for name, ds in sites.items() if len(ds) == 0]
        if empty:
            raise ConfigError(f"class-erased split: no image contains the classes of {empty}")
        labelled = dict(zip(sites, labelled))
    return sites, evaluation, labelled


def _image_sites(train, parts) -> dict:
    """``site<s>``: the items of the images ``parts[s]`` of ``train`` (all five crops of each)."""
    return {f"site{s}": Subset(f"site{s}", train, [i * train.crops + c for i in idx for c in range(train.crops)])
            for s, idx in enumerate(parts)}


@dataclass
class Setup:
    """A config's device, cached features and model factory, shared by ``fussfast run`` and the
    Flower apps."""

    config: dict
    device: torch.device
    train: dict[str, FeatureSet]  # per site
    shared: FeatureSet  # the shared evaluation set
    evaluation: object  # its dataset (for sample images)
    feature_dim: int
    seconds: float  # feature extraction (cache reads when warm)

    def new_model(self) -> SiteModel | SupervisedModel:
        c, t = self.config, self.config["train"]
        if c["task"] == "supervised":
            lc, K = c["loss"], c["data"]["num_classes"]
            contrast = RegionContrast(K, tau=lc["contrast_tau"], weight=lc["contrast_weight"],
                                      threshold=lc["pseudo_threshold"], max_anchors=lc["max_anchors"],
                                      backend=t["backend"])
            return SupervisedModel(self.feature_dim, K, embed_dim=c["model"]["embed_dim"], objective=lc["objective"],
                                   contrast=contrast, lr=t["head_lr"], backend=t["backend"], device=self.device)
        loss = CorrespondenceConfig.preset(c["loss"]["preset"], feature_samples=c["loss"]["feature_samples"])
        return SiteModel(self.feature_dim, c["model"]["code_dim"], c["data"]["num_classes"], loss=loss,
                         num_neighbors=c["loss"]["num_neighbors"], head_lr=t["head_lr"], probe_lr=t["probe_lr"],
                         backend=t["backend"], device=self.device)

    def clients(self) -> dict[str, Client]:
        """One client per site, or for ``centralized`` one holding every site's data (kNN
        positives are still found within each site)."""
        fed, t = self.config["fed"], self.config["train"]
        options = dict(local_steps=t["local_steps"], batch_size=t["batch_size"],
                       distill_weight=fed["distill_weight"], distill=fed["distill"])
        if fed["strategy"] != "centralized":
            return {name: Client(name, d, self.new_model(), **options) for name, d in self.train.items()}
        data = list(self.train.values())
        pooled = FeatureSet(*(torch.cat([getattr(d, k) for d in data]) for k in ("features", "descriptors", "masks")))
        if data[0].labelled is not None:  # class-erased: every site's images keep their site's classes
            pooled.labelled = torch.cat([d.labelled for d in data])
        tables, offset = [], 0
        for d in data:
            tables.append(knn_table(d.descriptors) + offset)
            offset += d.features.shape[0]
        width = min(t.shape[1] for t in tables)
        table = torch.cat([t[:, :width] for t in tables])
        return {"all": Client("all", pooled, self.new_model(), table=table, **options)}


def prepare(config: dict, sites: list[str] | None = None) -> Setup:
    """Builds the backbone and extracts (or reads from the cache) the features of the shared
    set and of every site, or only of ``sites``."""
    t0 = time.perf_counter()
    seed, data_cfg, model_cfg = config["seed"], config["data"], config["model"]
    device = torch.device("cuda" if config["device"] == "auto" and torch.cuda.is_available()
                          else "cpu" if config["device"] == "auto" else config["device"])
    torch.manual_seed(seed)
    backbone = FrozenBackbone(model_cfg["backbone"], weights=model_cfg["weights"],
                              precision=model_cfg["precision"]).to(device)
    datasets, evaluation, labelled = make_data(data_cfg, seed)
    if sites is not None:
        unknown = sorted(set(sites) - set(datasets))
        if unknown:
            raise ConfigError(f"unknown sites {unknown}; the data has {sorted(datasets)}")
        datasets = {name: datasets[name] for name in sites}
    base_key = {"data": data_cfg, "seed": seed, "backbone": model_cfg["backbone"],
                "weights": weights_digest(model_cfg["weights"], seed), "precision": model_cfg["precision"]}

    def features(name, ds):
        key = {**base_key, "split": name, "images": len(ds), "resolution": ds.image_size}
        return extract(backbone, ds, key, config["cache_dir"], device, flip=True,
                       progress=_progress(f"features {name}"))

    train = {name: features(name, ds) for name, ds in datasets.items()}
    for name, classes in (labelled or {}).items():
        if name in train:  # the site annotates only ``classes``
            known = torch.zeros(data_cfg["num_classes"], dtype=torch.bool)
            known[classes] = True
            train[name].labelled = known.expand(len(datasets[name]), -1).clone()
    shared = features("eval", evaluation)
    return Setup(config, device, train, shared, evaluation, backbone.dim, time.perf_counter() - t0)


def run(config: dict, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Trains and evaluates ``config`` into ``out_dir``: ``metrics.json`` (rewritten after every
    round), ``checkpoint/`` (every completed round), and at the end ``model.safetensors`` (the
    scored models' arrays) and ``samples.safetensors`` (a few shared-set images with their
    ground truth and predictions). ``resume=True`` carries on from ``out_dir``'s checkpoint."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if resume:
        _check_resumable(config, out_dir / "checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    fed, K = config["fed"], config["data"]["num_classes"]
    setup = prepare(config)
    device, train, shared, t_features = setup.device, setup.train, setup.shared, setup.seconds
    clients = setup.clients()
    global_model = setup.new_model()
    strategy = strategy_from_config(config, global_model.arrays())

    def after_round(federation):
        _write(config, out_dir, device, shared, K, federation.history, t0, t_features)

    try:
        federation = Federation(clients, strategy, global_model, sites=train, shared=shared, num_classes=K,
                                rounds=fed["rounds"], generator=torch.Generator().manual_seed(config["seed"]),
                                min_clients=fed["min_clients"], clients_per_round=fed["clients_per_round"],
                                fraction=fed["fraction"], checkpoint_dir=out_dir / "checkpoint",
                                meta={"config": config}, after_round=after_round)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if resume:
        done = len(federation.resume()["history"])
        print(f"resuming {out_dir} after round {done}/{fed['rounds']}", file=sys.stderr)
    try:
        history = federation.run()
    except KeyboardInterrupt:
        done = len(federation.history)
        print(f"\ninterrupted; {out_dir}/checkpoint holds round {done}. Continue with: "
              f"fussfast run CONFIG --resume {out_dir}", file=sys.stderr)
        raise
    _save_outputs(federation, setup.evaluation, out_dir)
    return _write(config, out_dir, device, shared, K, history, t0, t_features)


def strategy_from_config(config: dict, arrays: dict) -> Strategy:
    """The ``fed`` table's strategy; ``arrays`` (a model's) checks the ``fed.local_params`` names."""
    fed = config["fed"]
    name = fed["strategy"]
    if name in ("centralized", "local"):
        if fed["local_params"]:
            raise ConfigError(f"config key 'fed.local_params' applies to federated strategies, not {name!r}")
        return make_strategy("local")
    options = {"weighted": fed["weighted"], "local_params": tuple(fed["local_params"])}
    if name == "fedprox":
        options.update(mu=fed["mu"], scope=fed["prox_scope"])
    elif name == "moon":
        options.update(mu=fed["moon_mu"], tau=fed["moon_tau"])
    elif name.startswith("fedcc"):
        options.update(metric=fed["cc_metric"], seed=config["seed"])
    strategy = make_strategy(name, **options)
    for group in strategy.local_params:
        if not any(k == group or k.startswith(group + ".") for k in arrays):
            groups = sorted({".".join(k.split(".")[:2]) for k in arrays} | {k.split(".")[0] for k in arrays})
            raise ConfigError(f"config key 'fed.local_params': {group!r} names no parameters; choose from {groups}")
    return strategy


def _check_resumable(config: dict, checkpoint: Path) -> None:
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {state_file}")
    saved = json.loads(state_file.read_text())["config"]
    # fed.rounds may grow (train on), and the cache may move; anything else would change the run
    differ = [k for k in _flat(config) if k not in ("fed.rounds", "cache_dir") and
              _flat(config)[k] != _flat(saved).get(k)]
    if differ:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {differ}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _save_outputs(federation: Federation, evaluation, out_dir: Path, num_samples: int = 4) -> None:
    """``model.safetensors``: the scored models' arrays as ``<model>/<array>``;
    ``samples.safetensors``: the first shared images (uint8), ground truth and the first scored
    model's predictions; unsupervised, clusters are mapped to classes by the Hungarian matching
    (-1: unmatched cluster), with that model's ``centroid_response``."""
    models = federation.models()
    save_file({f"{name}/{k}": v for name, m in models.items() for k, v in m.arrays().items()},
              str(out_dir / "model.safetensors"))
    model, shared = next(iter(models.values())), federation.shared
    n = min(num_samples, shared.features.shape[0])
    masks = shared.masks[:n]
    pred = model.predict(shared.features[:n], shared.flipped[:n] if shared.flipped is not None else None,
                         masks.shape[-2:]).cpu()
    images = torch.stack([evaluation[i][0] for i in range(n)])
    images = (images * torch.from_numpy(IMAGENET_STD) + torch.from_numpy(IMAGENET_MEAN)).clamp(0, 1)
    samples = {"image": (images * 255).round().to(torch.uint8), "mask": masks, "pred": pred}
    if model.matching == "hungarian":
        assignment = torch.tensor(hungarian_scores(model.confusion(shared, federation.num_classes)).assignment)
        distance, usage = centroid_response(model, shared.features[:64])
        samples.update(pred=assignment[pred], assignment=assignment, centroid_distance=distance, usage=usage)
    save_file(samples, str(out_dir / "samples.safetensors"))


@torch.no_grad()
def centroid_response(model: SiteModel, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How distinct the centroids are to the data: ``1 - corr`` of two centroids' cosine
    responses over the pixels of ``features`` (0: they respond alike, collapsed prototypes), and
    how many pixels each centroid wins."""
    model.head.eval()
    code = model.head(features.to(model.device)).double()
    z = torch.nn.functional.normalize(code.permute(0, 2, 3, 1).reshape(-1, code.shape[1]), dim=1)
    sim = z @ torch.nn.functional.normalize(model.probe.clusters.double(), dim=1).T
    usage = torch.bincount(sim.argmax(1), minlength=sim.shape[1])
    r = (sim - sim.mean(0)) / sim.std(0).clamp(min=1e-12)
    corr = (r.T @ r) / max(r.shape[0] - 1, 1)
    return (1 - corr).clamp(min=0).float().cpu(), usage.cpu()


def _write(config, out_dir, device, shared, K, rounds, t0, t_features) -> dict:
    metrics = {
        "config": config,
        "versions": {"fussfast": fussfast.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
        "baseline": {"majority": majority_baseline(shared, K)},
        "rounds": rounds,
        "completed_rounds": len(rounds),
        "final": {"global": rounds[-1]["global"], "clients": rounds[-1]["clients"]} if rounds else None,
        "timings": {"features_s": t_features, "total_s": time.perf_counter() - t0},
    }
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(out_dir / "metrics.json")
    return metrics
