"""Run configuration: frozen, typed sections read from a TOML file and ``--set key=value``
overrides.

Each key is one dataclass field made by ``key()``: its default, type, constraints and the line of
documentation that ``fussfast config --keys`` prints (and the README's key table is). Validation
and every error message come from that one table; only checks between keys are written by hand
(``_check_together``). Names that a key may take are imported from the module that defines them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fussfast.data import CITY_SPLITS, CROPS, DATA_KINDS
from fussfast.fed.privacy import DP_ACCOUNTANTS
from fussfast.fed.strategy import CC_METRICS, PROX_SCOPES, STRATEGIES
from fussfast.losses import DISTILL_KINDS, PRESETS
from fussfast.model import KNN_WIDTH
from fussfast.model.backbone import BACKBONES, PRECISIONS, patch_size_of
from fussfast.model.lora import LORA_TARGETS
from fussfast.model.moe import ROUTERS
from fussfast.ops._boundary import BACKENDS
from fussfast.tasks import OBJECTIVES, TASKS

# Upper bounds of the size keys: beyond them a run could not allocate, or would not end.
MAX_SIDE, MAX_CLASSES, MAX_CHANNELS, MAX_COUNT = 8192, 4096, 65536, 10**6

FED_STRATEGIES = ("centralized", *STRATEGIES)  # centralized: the local strategy over one pooled site
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config problem, with the offending key in the message."""


def key(default: Any, doc: str, *, choices=None, at_least=None, above=None, at_most=None) -> Any:
    """A config key: ``default``, one line of ``doc``, and what values it allows."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "at_least": at_least,
            "above": above, "at_most": at_most}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    kind: str = key("synthetic", "synthetic (built in), folder, cityscapes or cocostuff27", choices=DATA_KINDS)
    root: str | None = key(None, "dataset directory (every kind but synthetic)")
    split: str = key("3x6", "cityscapes: 3x6, 6x3 or 18x1 cities per site; or class-erased (supervised)")
    classes_per_site: int = key(2, "class-erased: classes each site annotates (the rest become ignore)",
                                at_least=1, at_most=MAX_CLASSES)
    crop: str = key("center", "training images: center (resize + centre crop) or five (five-crop)",
                    choices=CROPS)
    num_classes: int = key(6, "classes in the data (clusters, unsupervised)", at_least=1, at_most=MAX_CLASSES)
    image_size: int = key(64, "training resolution (a multiple of the patch size)", at_least=1, at_most=MAX_SIDE)
    eval_size: int = key(64, "evaluation resolution (a multiple of the patch size)", at_least=1, at_most=MAX_SIDE)
    sites: int = key(3, "synthetic, cocostuff27: number of sites", at_least=1, at_most=MAX_COUNT)
    images_per_site: int = key(48, "synthetic: training images per site", at_least=1, at_most=MAX_COUNT)
    eval_images: int = key(24, "synthetic: images of the shared evaluation set", at_least=1, at_most=MAX_COUNT)
    alpha: float = key(0.5, "synthetic, cocostuff27: Dirichlet label skew over sites (0: IID)", at_least=0)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = key("vit_small_patch8_224.dino", "frozen backbone (timm name): DINO, DINOv2 (patch 14) or SAM's "
                                                     "image encoder", choices=BACKBONES)
    weights: str = key("random", "random, timm (downloads), or a local weights file")
    precision: str = key("auto", "backbone precision; auto: fp16 on CUDA, bf16 on CPUs with native bf16, "
                                 "else fp32", choices=("auto", *PRECISIONS))
    head_precision: str = key("auto", "the head's products; auto: bf16 on CPUs with native bf16, else fp32 "
                                      "(parameters stay fp32)", choices=("auto", "fp32", "bf16"))
    code_dim: int = key(70, "unsupervised: code channels of the head", at_least=1, at_most=MAX_CHANNELS)
    embed_dim: int = key(256, "supervised: projection embedding for the region contrast", at_least=1,
                          at_most=MAX_CHANNELS)
    lora_rank: int = key(0, "LoRA rank on the backbone's attention (0: off); with LoRA the adapted blocks run "
                            "every step", at_least=0, at_most=MAX_CHANNELS)
    lora_alpha: float = key(8.0, "LoRA scale: the update is (alpha / rank) B A", above=0)
    lora_blocks: int = key(4, "LoRA on the backbone's last N blocks (the frozen blocks before are cached)",
                           at_least=1, at_most=MAX_COUNT)
    lora_targets: tuple[str, ...] = key(("qkv", "proj"), 'attention projections given LoRA: "qkv", "proj"')
    moe_experts: int = key(0, "experts of the local mixture-of-experts adapter before the head, kept on each site "
                              "(0: none)", at_least=0, at_most=MAX_CLASSES)
    moe_hidden: int = key(32, "hidden channels of each expert", at_least=1, at_most=MAX_CHANNELS)
    moe_router: str = key("pixel", "experts' gates per pixel or per image (from its mean feature)",
                          choices=ROUTERS)
    moe_balance: float = key(0.01, "weight of the experts' load-balancing term (squared CV of the mean gates)",
                             at_least=0)


@dataclass(frozen=True)
class LossConfig:
    preset: str = key("cityscapes", "correspondence-loss weights and shifts (STEGO's presets)", choices=PRESETS)
    feature_samples: int = key(11, "correspondence loss: grid points per side sampled per image", at_least=1,
                               at_most=MAX_SIDE)
    num_neighbors: int = key(2, "kNN positives per image (FUSS: 2)", at_least=1, at_most=KNN_WIDTH)
    objective: str = key("backce+contrast", "supervised: ce, backce or backce+contrast (FedSeg Table 1a)",
                         choices=OBJECTIVES)
    contrast_weight: float = key(1.0, "supervised: lambda of the pixel-to-region contrast", at_least=0)
    contrast_tau: float = key(0.07, "supervised: temperature of the contrast", above=0)
    pseudo_threshold: float = key(0.8, "supervised: global-model confidence for a pseudo-label", at_least=0,
                                  at_most=1)
    max_anchors: int = key(4096, "supervised: anchor pixels per batch, balanced over classes", at_least=1,
                           at_most=MAX_COUNT)


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = key(40, "local steps per round", at_least=1, at_most=MAX_COUNT)
    batch_size: int = key(8, "images per step", at_least=1, at_most=MAX_COUNT)
    head_lr: float = key(5e-4, "Adam learning rate of the head", above=0)
    probe_lr: float = key(5e-3, "unsupervised: Adam learning rate of the centroids", above=0)
    backend: str = key("fused", "fused kernels or the pure-torch references, for every op", choices=BACKENDS)


@dataclass(frozen=True)
class FedConfig:
    strategy: str = key("centralized", "how the server combines the sites (table above)", choices=FED_STRATEGIES)
    rounds: int = key(3, "federated rounds", at_least=1, at_most=MAX_COUNT)
    eval_every: int = key(1, "score the models every N-th round, and always the last (0: the last only)",
                          at_least=0, at_most=MAX_COUNT)
    clients_per_round: int = key(0, "sites sampled each round (0: use fed.fraction)", at_least=0)
    fraction: float = key(1.0, "share of the sites sampled each round (at least one)", above=0, at_most=1)
    weighted: bool = key(True, "average weighted by each site's sample count")
    mu: float = key(0.001, "fedprox: weight of the proximal term", at_least=0)
    prox_scope: str = key("head", "fedprox: head (the paper) or mlp (FUSS's code)", choices=PROX_SCOPES)
    moon_mu: float = key(1.0, "moon: weight of the model-contrastive term", at_least=0)
    moon_tau: float = key(0.5, "moon: temperature", above=0)
    dyn_alpha: float = key(0.01, "feddyn: alpha of the dynamic regularizer (the paper's usual value)", above=0)
    server_lr: float = key(1.0, "scaffold: the server's learning rate eta_g on the mean model change", above=0)
    cc_metric: str = key("euclidean", "fedcc: euclidean (FUSS) or cosine", choices=CC_METRICS)
    k_auto: bool = key(False, "fedcc, unsupervised: estimate the cluster count each round (merge near-duplicate "
                              "slot centroids by silhouette); sites train fed.k_max centroids")
    k_min: int = key(2, "auto-K: fewest clusters the server may choose", at_least=2, at_most=MAX_CLASSES)
    k_max: int = key(0, "auto-K: most clusters, the sites' centroid slots (0: twice data.num_classes)",
                     at_least=0, at_most=MAX_CLASSES)
    k_merge_silhouette: float = key(0.5, "auto-K: mean silhouette a merge of the slot centroids must reach "
                                         "(below it every active slot is kept)", at_least=-1, at_most=1)
    dp_epsilon: float = key(0.0, "fedcc: (epsilon, delta)-DP of each site's centroid uploads over all fed.rounds "
                                 "(0: off; needs fussfast[dp])", at_least=0)
    dp_delta: float = key(1e-5, "fedcc DP: delta, in (0, 1)", above=0)
    dp_clip: float = key(1.0, "fedcc DP: L2 bound each uploaded centroid is clipped to", above=0)
    dp_accountant: str = key("pld", "fedcc DP: dp-accounting's accountant that calibrates the noise",
                             choices=DP_ACCOUNTANTS)
    local_params: tuple[str, ...] = key((), 'parameter groups kept on the sites: "centroids", "head", head '
                                            'modules ("head.lin") or "lora"')
    distill_weight: float = key(0.0, "global->local distillation of the codes (0: off)", at_least=0)
    distill: str = key("cosine", "distillation: cosine or kl", choices=DISTILL_KINDS)
    personal_steps: int = key(0, "two-phase round: steps fine-tuning the local groups (MoE, fed.local_params) after "
                                 "the shared ones (0: one joint phase)", at_least=0, at_most=MAX_COUNT)
    min_clients: int = key(1, "fewer usable updates in a round end the run", at_least=1)
    max_samples: int = key(10_000_000, "a site claiming more samples is left out of the round", at_least=1)
    max_update_ratio: float = key(10.0, "a site whose update moves the model by more than this times its norm "
                                        "is left out", above=0)
    keep_clients_in_memory: bool = key(False, "keep every started site's model and optimizer state in memory "
                                              "between rounds (false: spill them to RUN_DIR/spill when sampling a "
                                              "subset of the sites)")


@dataclass(frozen=True)
class EvalConfig:
    crf: bool = key(False, "also score the predictions refined by a dense CRF on the images (STEGO); needs "
                           "fussfast[crf]")
    crf_iterations: int = key(10, "CRF: mean-field iterations", at_least=1, at_most=MAX_COUNT)
    crf_gaussian_xy: float = key(1.0, "CRF: width in pixels of the smoothness kernel", above=0)
    crf_gaussian_weight: float = key(3.0, "CRF: weight of the smoothness kernel", at_least=0)
    crf_bilateral_xy: float = key(67.0, "CRF: width in pixels of the appearance kernel", above=0)
    crf_bilateral_rgb: float = key(3.0, "CRF: width in colour levels (0-255) of the appearance kernel", above=0)
    crf_bilateral_weight: float = key(4.0, "CRF: weight of the appearance kernel", at_least=0)
    crf_alpha: float = key(2.0, "unsupervised CRF: scale of the cluster cosines before the softmax (STEGO: 2)",
                           above=0)


@dataclass(frozen=True)
class Config:
    task: str = key("unsupervised", "unsupervised (FUSS: clusters, Hungarian) or supervised (FedSeg: labels)",
                    choices=TASKS)
    seed: int = key(0, "seed of the data, the models and the sampling", at_least=0)
    cache_dir: str = key(".fussfast_cache", "where backbone features are cached")
    device: str = key("auto", "auto (cuda when available), cpu or cuda", choices=DEVICES)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def supervised(self) -> bool:
        return self.task == "supervised"

    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict (as in metrics.json and the checkpoint)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, overrides: list[str]) -> "Config":
        """This config with ``--set``-style ``key=value`` overrides, checked."""
        return _build(self.to_dict(), overrides)


SECTIONS = ("data", "model", "loss", "train", "fed", "eval")  # the tables of a config file


def keys() -> list[tuple[str, dataclasses.Field, Any]]:
    """Every key as ``(dotted name, field, type)``, in table order."""
    out = []
    for cls, prefix in [(Config, "")] + [(_section(name), f"{name}.") for name in SECTIONS]:
        hints = typing.get_type_hints(cls)
        out += [(prefix + f.name, f, hints[f.name]) for f in dataclasses.fields(cls) if "doc" in f.metadata]
    return out


def keys_markdown() -> str:
    """The key table of the README: key, default, allowed values, meaning."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for name, f, _ in keys():
        rows.append(f"| `{name}` | `{_toml(f.default)}` | {_allowed(f.metadata) or ''} | {f.metadata['doc']} |")
    return "\n".join(rows)


def to_toml(config: Config) -> str:
    """``config`` as a TOML file that ``load_config`` reads back to the same config."""
    top, tables = [], []
    for name, value in config.to_dict().items():
        if isinstance(value, dict):
            tables.append(f"\n[{name}]\n" + "".join(f"{k} = {_toml(v, True)}\n" for k, v in value.items()
                                                      if v is not None))
        elif value is not None:
            top.append(f"{name} = {_toml(value, True)}\n")
    return ("".join(top) + "".join(tables)).strip() + "\n"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The defaults, updated by the TOML file at ``path`` and then by ``overrides``."""
    user: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            user = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _build(user, overrides)


def _build(user: dict[str, Any], overrides: list[str]) -> Config:
    for item in overrides:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: take it as a string
        *parents, leaf = name.strip().split(".")
        table = user
        for p in parents:
            table = table.setdefault(p, {})
            if not isinstance(table, dict):
                raise ConfigError(f"config key {p!r} must be a table")
        table[leaf] = value
    config = _section_from(Config, user, "")
    _check_together(config)
    return config


def _section(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _section_from(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix.rstrip('.')!r} must be a table")
    hints, known = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown config key {prefix + name!r}")
    kwargs = {}
    for name, value in values.items():
        if name in SECTIONS and cls is Config:
            kwargs[name] = _section_from(_section(name), value, f"{name}.")
        else:
            kwargs[name] = _checked(prefix + name, value, hints[name], known[name].metadata)
    return cls(**kwargs)


def _checked(name: str, value: Any, kind: Any, meta: dict) -> Any:
    """``value`` as the key's type, or a ConfigError that names the key."""
    if kind == tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {name!r} must be a list of strings, got {value!r}")
        return tuple(value)
    if kind == str | None:
        if value is None:  # unset (TOML has no null; to_dict() writes it)
            return None
        kind = str
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key {name!r} must be {kind.__name__}, got {type(value).__name__} ({value!r})")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"config key {name!r} must be a finite number, got {value!r}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"config key {name!r} must be one of {meta['choices']}, got {value!r}")
    low, high = meta["at_least"], meta["at_most"]
    below = (meta["above"] is not None and value <= meta["above"]) or (low is not None and value < low)
    above = high is not None and value > high
    if below or above:
        # a float's range is one interval; an int's bounds are a floor and, apart, a size cap
        allowed = _allowed(meta) if kind is float else \
            _allowed({**meta, "at_most": None}) if below else f"<= {high} (larger cannot run)"
        raise ConfigError(f"config key {name!r} must be {allowed}, got {value!r}")
    return value


def _allowed(meta: dict) -> str | None:
    if meta["choices"] is not None:
        return ", ".join(meta["choices"])
    low = f"[{meta['at_least']}" if meta["at_least"] is not None else f"({meta['above']}" \
        if meta["above"] is not None else None
    if low and meta["at_most"] is not None:
        return f"in {low}, {meta['at_most']}]"
    if meta["at_most"] is not None:
        return f"<= {meta['at_most']}"
    if low:
        return f">= {low[1:]}" if low[0] == "[" else f"> {low[1:]}"
    return None


def _check_together(c: Config) -> None:
    """The rules that involve more than one key."""
    data, erased = c.data, c.data.split == "class-erased"
    if data.kind != "synthetic":
        if data.root is None or not Path(data.root).is_dir():
            raise ConfigError(f"config key 'data.root': no dataset directory at {data.root}")
        # Cityscapes: 27 classes (labelId - 7) unsupervised as in STEGO, the 19 trainIds supervised
        classes = 19 if c.supervised and data.kind == "cityscapes" else 27
        if data.kind in ("cityscapes", "cocostuff27") and data.num_classes != classes:
            raise ConfigError(f"config key 'data.num_classes' must be {classes} for {c.task} {data.kind}")
        if data.kind == "cityscapes" and data.split not in (*CITY_SPLITS, "class-erased"):
            raise ConfigError(f"config key 'data.split' must be one of {(*CITY_SPLITS, 'class-erased')} for "
                              f"cityscapes, got {data.split!r}")
    if erased:
        if not c.supervised:
            raise ConfigError("config key 'data.split' = 'class-erased' needs task = 'supervised' (it erases labels)")
        if data.kind not in ("synthetic", "cityscapes"):
            raise ConfigError(f"config key 'data.split' = 'class-erased' is for synthetic or cityscapes data, "
                              f"not {data.kind!r}")
        if data.classes_per_site > data.num_classes:
            raise ConfigError(f"config key 'data.classes_per_site' must be <= data.num_classes "
                              f"({data.num_classes}), got {data.classes_per_site}")
    if c.supervised and c.fed.strategy.startswith("fedcc"):
        raise ConfigError(f"config key 'fed.strategy': {c.fed.strategy} re-clusters centroids, which the "
                          "supervised head does not have; choose fedavg, fedprox, moon, feddyn, scaffold, local or "
                          "centralized")
    _check_auto_k(c)
    _check_privacy(c.fed)
    if c.fed.strategy in ("centralized", "local") and c.fed.local_params:
        raise ConfigError(f"config key 'fed.local_params' applies to federated strategies, not {c.fed.strategy!r}")
    unknown = sorted(set(c.model.lora_targets) - set(LORA_TARGETS))
    if unknown or not c.model.lora_targets:
        raise ConfigError(f"config key 'model.lora_targets' must name some of {LORA_TARGETS}, got "
                          f"{list(c.model.lora_targets)}")
    patch = patch_size_of(c.model.backbone)
    for size_key in ("image_size", "eval_size"):
        if getattr(data, size_key) % patch:
            raise ConfigError(f"config key 'data.{size_key}' must be a multiple of the patch size {patch} of "
                              f"model.backbone {c.model.backbone!r}, got {getattr(data, size_key)}")
    if c.fed.personal_steps and c.fed.strategy in ("centralized", "local"):
        raise ConfigError(f"config key 'fed.personal_steps' applies to federated strategies, not {c.fed.strategy!r}")
    if c.fed.personal_steps and not (c.model.moe_experts or c.fed.local_params):
        raise ConfigError("config key 'fed.personal_steps' needs something local to fine-tune: set "
                          "model.moe_experts or fed.local_params")
    if c.model.weights not in ("random", "timm") and not Path(c.model.weights).is_file():
        raise ConfigError(f"config key 'model.weights': no file at {c.model.weights}")
    if c.eval.crf and importlib.util.find_spec("pydensecrf") is None:  # fail before any work, not at round 1
        raise ConfigError('config key \'eval.crf\' needs pydensecrf2: pip install "fussfast[crf]"')


def _check_auto_k(c: Config) -> None:
    """Auto-K re-clusters the pooled centroids on the server: FedCC's unsupervised path only."""
    fed = c.fed
    if not fed.k_auto:
        return
    if c.supervised or not fed.strategy.startswith("fedcc"):
        raise ConfigError(f"config key 'fed.k_auto' needs task = 'unsupervised' and fed.strategy fedcc-kmeans or "
                          f"fedcc-maximin, got {c.task} {fed.strategy}")
    if any(p == "centroids" for p in fed.local_params):
        raise ConfigError("config key 'fed.k_auto' needs the centroids shared: remove \"centroids\" from fed.local_params")
    if auto_k_max(c) < fed.k_min:
        raise ConfigError(f"config key 'fed.k_max' must be >= fed.k_min={fed.k_min}, got {auto_k_max(c)}")


def auto_k_max(c: Config) -> int:
    """The sites' centroid slots with auto-K (``fed.k_max``, 0: twice ``data.num_classes``)."""
    return c.fed.k_max or 2 * c.data.num_classes


def _check_privacy(fed: FedConfig) -> None:
    """The DP keys of FedCC's centroid uploads (``fed/privacy.py``)."""
    if fed.dp_delta >= 1:
        raise ConfigError(f"config key 'fed.dp_delta' must be < 1, got {fed.dp_delta!r}")
    if not fed.dp_epsilon:
        return
    if not fed.strategy.startswith("fedcc"):
        raise ConfigError(f"config key 'fed.dp_epsilon' noises FedCC's centroid uploads: it needs fed.strategy "
                          f"fedcc-kmeans or fedcc-maximin, not {fed.strategy!r}")
    if "centroids" in fed.local_params:
        raise ConfigError("config key 'fed.dp_epsilon' protects the centroid uploads, but fed.local_params keeps "
                          "the centroids on the sites")
    if importlib.util.find_spec("dp_accounting") is None:
        raise ConfigError('config key \'fed.dp_epsilon\' needs dp-accounting: pip install "fussfast[dp]"')


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _toml(value: Any, exact: bool = False) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value) if exact else f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v, exact) for v in value) + "]"
    return repr(value)
