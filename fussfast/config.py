"""Run configuration: a TOML file, checked key by key, with ``--set key=value`` overrides."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

# Every key a config may hold, with its default; the type of the default is the key's type
# (None: optional string).
DEFAULTS: dict[str, dict[str, Any]] = {
    "task": "unsupervised",          # unsupervised (FUSS: clusters, Hungarian) or supervised (FedSeg: labels)
    "data": {
        "kind": "synthetic",         # synthetic (built in), folder, cityscapes, cocostuff27
        "root": None,                # dataset directory (all kinds but synthetic)
        "split": "3x6",              # cityscapes: 3x6, 6x3 or 18x1 cities; or class-erased (supervised)
        "classes_per_site": 2,       # class-erased: classes each site annotates (the rest become ignore)
        "crop": "center",            # training images: center (resize + centre crop) or five (five-crop)
        "num_classes": 6,
        "image_size": 64,            # training resolution (a multiple of the patch size)
        "eval_size": 64,             # evaluation resolution
        "sites": 3,                  # synthetic, cocostuff27: number of sites
        "images_per_site": 48,
        "eval_images": 24,
        "alpha": 0.5,                # synthetic, cocostuff27: Dirichlet label skew (0 = IID)
    },
    "model": {
        "backbone": "vit_small_patch8_224.dino",
        "weights": "random",         # random, timm (download), or a local file
        "precision": "fp16",
        "code_dim": 70,
        "embed_dim": 256,            # supervised: projection embedding for the region contrast
    },
    "loss": {
        "preset": "cityscapes",      # CorrespondenceLoss preset
        "feature_samples": 11,
        "num_neighbors": 2,          # kNN positives (FUSS: 2)
        "objective": "backce+contrast",  # supervised: ce, backce or backce+contrast (FedSeg Table 1a)
        "contrast_weight": 1.0,      # supervised: lambda of the pixel-to-region contrast
        "contrast_tau": 0.07,        # supervised: its temperature
        "pseudo_threshold": 0.8,     # supervised: global-model confidence for a pseudo-label
        "max_anchors": 4096,         # supervised: anchor pixels per batch, balanced over classes
    },
    "train": {
        "local_steps": 40,           # steps per round
        "batch_size": 8,
        "head_lr": 5e-4,
        "probe_lr": 5e-3,
        "backend": "fused",          # fused or reference, for every op
    },
    "fed": {
        "strategy": "centralized",   # centralized, local, fedavg, fedprox, moon, fedcc-kmeans, fedcc-maximin
        "rounds": 3,
        "clients_per_round": 0,      # clients sampled each round (0: use fraction)
        "fraction": 1.0,             # share of the clients sampled each round (at least one)
        "weighted": True,            # average weighted by each site's sample count
        "mu": 0.001,                 # fedprox
        "prox_scope": "head",        # fedprox: head (paper) or mlp (FUSS's code)
        "moon_mu": 1.0,              # moon: weight of the model-contrastive term
        "moon_tau": 0.5,             # moon: temperature
        "cc_metric": "euclidean",    # fedcc: euclidean (FUSS) or cosine
        "local_params": [],          # personalization: "centroids", "head" or head modules ("head.lin")
        "distill_weight": 0.0,       # global->local distillation of the codes (0: off)
        "distill": "cosine",         # cosine or kl
        "min_clients": 1,            # fewer usable updates in a round end the run
    },
    "seed": 0,
    "cache_dir": ".fussfast_cache",
    "device": "auto",                # auto, cpu, cuda
}

CHOICES = {
    ("task",): ("unsupervised", "supervised"),
    ("loss", "objective"): ("ce", "backce", "backce+contrast"),
    ("data", "kind"): ("synthetic", "folder", "cityscapes", "cocostuff27"),
    ("data", "crop"): ("center", "five"),
    ("model", "precision"): ("fp16", "bf16", "fp32"),
    ("train", "backend"): ("fused", "reference"),
    ("fed", "strategy"): ("centralized", "local", "fedavg", "fedprox", "moon", "fedcc-kmeans", "fedcc-maximin"),
    ("fed", "distill"): ("cosine", "kl"),
    ("fed", "prox_scope"): ("head", "mlp"),
    ("fed", "cc_metric"): ("euclidean", "cosine"),
    ("device",): ("auto", "cpu", "cuda"),
}


class ConfigError(ValueError):
    """A config problem, with the offending key in the message."""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            user = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        _merge(config, user, DEFAULTS, "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: take it as a string
        *parents, leaf = key.strip().split(".")
        nested: dict[str, Any] = {leaf: value}
        for p in reversed(parents):
            nested = {p: nested}
        _merge(config, nested, DEFAULTS, "")
    _check_choices(config)
    return config


def _merge(config: dict, user: dict, schema: dict, prefix: str) -> None:
    for key, value in user.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config key {name!r}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a table")
            _merge(config[key], value, default, name + ".")
            continue
        config[key] = _typed(name, value, default)


def _typed(name: str, value: Any, default: Any) -> Any:
    if default is None:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {type(value).__name__}")
        return value
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"config key {name!r} must be {want.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _check_choices(config: dict) -> None:
    for path, allowed in CHOICES.items():
        value = config
        for p in path:
            value = value[p]
        if value not in allowed:
            raise ConfigError(f"config key {'.'.join(path)!r} must be one of {allowed}, got {value!r}")
    positive = [("data", "num_classes"), ("data", "image_size"), ("data", "eval_size"), ("data", "sites"),
                ("data", "images_per_site"), ("data", "eval_images"), ("data", "classes_per_site"),
                ("model", "code_dim"), ("model", "embed_dim"), ("loss", "max_anchors"),
                ("train", "local_steps"), ("train", "batch_size"), ("fed", "rounds"), ("fed", "min_clients")]
    for section, key in positive:
        if config[section][key] < 1:
            raise ConfigError(f"config key '{section}.{key}' must be >= 1, got {config[section][key]}")
    if config["data"]["alpha"] < 0:
        raise ConfigError("config key 'data.alpha' must be >= 0")
    fed = config["fed"]
    if not 0 < fed["fraction"] <= 1:
        raise ConfigError(f"config key 'fed.fraction' must be in (0, 1], got {fed['fraction']}")
    for key in ("clients_per_round", "mu", "moon_mu", "distill_weight"):
        if fed[key] < 0:
            raise ConfigError(f"config key 'fed.{key}' must be >= 0, got {fed[key]}")
    if fed["moon_tau"] <= 0:
        raise ConfigError(f"config key 'fed.moon_tau' must be > 0, got {fed['moon_tau']}")
    if not all(isinstance(p, str) for p in fed["local_params"]):
        raise ConfigError(f"config key 'fed.local_params' must be a list of strings, got {fed['local_params']!r}")
    data = config["data"]
    supervised = config["task"] == "supervised"
    erased = data["split"] == "class-erased"
    if data["kind"] != "synthetic":
        if data["root"] is None or not Path(data["root"]).is_dir():
            raise ConfigError(f"config key 'data.root': no dataset directory at {data['root']}")
        # Cityscapes: 27 classes (labelId - 7) unsupervised as in STEGO, the 19 trainIds supervised
        classes = 19 if supervised and data["kind"] == "cityscapes" else 27
        if data["kind"] in ("cityscapes", "cocostuff27") and data["num_classes"] != classes:
            raise ConfigError(f"config key 'data.num_classes' must be {classes} for {config['task']} {data['kind']}")
        if data["kind"] == "cityscapes" and data["split"] not in ("3x6", "6x3", "18x1", "class-erased"):
            raise ConfigError("config key 'data.split' must be 3x6, 6x3, 18x1 or class-erased for cityscapes")
    if erased:
        if not supervised:
            raise ConfigError("config key 'data.split' = 'class-erased' needs task = 'supervised' (it erases labels)")
        if data["kind"] not in ("synthetic", "cityscapes"):
            raise ConfigError(f"config key 'data.split' = 'class-erased' is for synthetic or cityscapes data, "
                              f"not {data['kind']!r}")
        if data["classes_per_site"] > data["num_classes"]:
            raise ConfigError(f"config key 'data.classes_per_site' must be <= data.num_classes "
                              f"({data['num_classes']}), got {data['classes_per_site']}")
    loss = config["loss"]
    if loss["contrast_weight"] < 0 or loss["contrast_tau"] <= 0:
        raise ConfigError("config keys 'loss.contrast_weight' must be >= 0 and 'loss.contrast_tau' > 0")
    if not 0 <= loss["pseudo_threshold"] <= 1:
        raise ConfigError(f"config key 'loss.pseudo_threshold' must be in [0, 1], got {loss['pseudo_threshold']}")
    if supervised and fed["strategy"].startswith("fedcc"):
        raise ConfigError(f"config key 'fed.strategy': {fed['strategy']} re-clusters centroids, which the "
                          "supervised head does not have; choose fedavg, fedprox, moon, local or centralized")
    weights = config["model"]["weights"]
    if weights not in ("random", "timm") and not Path(weights).is_file():
        raise ConfigError(f"config key 'model.weights': no file at {weights}")
