"""Everything a run builds before its first round, from a ``Config``: data → sites → features →
models → clients → strategy → federation. ``fussfast run`` and the Flower apps both build here."""

from __future__ import annotations

import hashlib
import sys
import time
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fussfast.config import Config, ConfigError, DataConfig, auto_k_max
from fussfast.data import synthetic_federation
from fussfast.data.datasets import (Subset, cityscapes27, cityscapes_sites, class_erased_split, cocostuff27,
                                    dirichlet_split, erased_site_classes, folder_federation)
from fussfast.eval import DenseCRF
from fussfast.features import FeatureSet, LazyFeatureSet, extract, on_disk, weights_digest
from fussfast.fed.client import Client
from fussfast.fed.loop import Federation
from fussfast.fed.strategy import Strategy, strategy_from_config
from fussfast.losses import CorrespondenceConfig, RegionContrast
from fussfast.model import FrozenBackbone, knn_table, resolve_head_precision, resolve_precision
from fussfast.model.encoder import AdaptedEncoder
from fussfast.model.lora import LoRA
from fussfast.model.cache import cached_json, files_digest
from fussfast.tasks import LocalModel, SiteModel, SupervisedModel
from fussfast.tasks.base import MOE


def make_data(data: DataConfig, seed: int, cache_dir: str | Path | None = None):
    """The sites' training datasets, the shared evaluation set, and the classes each site
    annotates (None: all; only class-erased splits erase labels). Splits that read every training
    mask (class-erased Cityscapes, COCO-Stuff's Dirichlet split) keep what they read in
    ``cache_dir`` (``mask_facts``)."""
    size, eval_size, five = data.image_size, data.eval_size, data.crop == "five"
    K, erased = data.num_classes, data.split == "class-erased"
    labelled = erased_site_classes(data.sites, K, data.classes_per_site) if erased else None
    if data.kind == "synthetic":
        probs = None
        if erased:  # every site sees every class; half its pixels are of the classes it annotates
            probs = [np.where(np.isin(np.arange(K), own), 0.5 / len(own), 0.5 / max(K - len(own), 1))
                     for own in labelled]
        sites, evaluation = synthetic_federation(
            num_sites=data.sites, num_classes=K, images_per_site=data.images_per_site, alpha=data.alpha or None,
            class_probs=probs, eval_images=data.eval_images, image_size=size, seed=seed)
        evaluation.image_size = eval_size
    elif data.kind == "folder":
        sites, evaluation = folder_federation(data.root, size, eval_size, K)
    elif data.kind == "cityscapes":
        evaluation = cityscapes27(data.root, "val", eval_size, num_classes=K)
        if erased:
            train = cityscapes27(data.root, "train", size, five_crop=five, num_classes=K)
            image_classes = mask_facts(train, cache_dir, "classes",
                                       lambda: [sorted(train.classes(i)) for i in range(0, len(train), train.crops)])
            sites = _image_sites(train, class_erased_split([set(c) for c in image_classes], labelled, seed))
        else:
            sites = cityscapes_sites(data.root, data.split, size, five, num_classes=K)
    else:
        full = cocostuff27(data.root, "train", size)
        dominant = np.array(mask_facts(full, cache_dir, f"dominant@{size}", lambda: [
            int(torch.bincount(m[m >= 0], minlength=27).argmax()) for m in (full[i][1] for i in range(len(full)))]))
        parts = dirichlet_split(dominant, data.sites, data.alpha or 1e6, seed)
        sites = {k: v for k, v in _image_sites(cocostuff27(data.root, "train", size, five), parts).items() if len(v)}
        evaluation = cocostuff27(data.root, "val", eval_size)
    if labelled is not None:
        empty = [name for name, ds in sites.items() if len(ds) == 0]
        if empty:
            raise ConfigError(f"class-erased split: no image contains the classes of {empty}")
        labelled = dict(zip(sites, labelled))
    return sites, evaluation, labelled


def mask_facts(images, cache_dir: str | Path | None, what: str, compute):
    """``compute()``, a per-image list read from the masks of ``images`` (an ``ImageList``), cached
    in ``cache_dir`` under the masks' contents, the label map and ``what``: a warm run decodes no
    mask, and a changed mask file (same name or not) recomputes it."""
    if cache_dir is None:
        return compute()
    present = [m for m in images.masks if m is not None]
    label_map = images.label_map
    key = {"facts": what, "num_classes": images.num_classes,
           "label_map": None if label_map is None else hashlib.sha256(label_map.tobytes()).hexdigest(),
           "missing": [i for i, m in enumerate(images.masks) if m is None],
           "masks": files_digest(present, Path(cache_dir) / "file-digests.json")}
    return cached_json(cache_dir, key, compute)


def _image_sites(train, parts) -> dict:
    """``site<s>``: the items of the images ``parts[s]`` of ``train`` (all five crops of each)."""
    return {f"site{s}": Subset(f"site{s}", train, [i * train.crops + c for i in idx for c in range(train.crops)])
            for s, idx in enumerate(parts)}


@dataclass
class Setup:
    """A config's device and cached features, and the factories of its models, clients,
    strategy and federation."""

    config: Config
    device: torch.device
    precision: str  # the backbone's, "auto" resolved
    head_precision: str  # the head's products, "auto" resolved
    train: dict[str, LazyFeatureSet]  # per site, read when first used
    shared: FeatureSet  # the shared evaluation set
    evaluation: object  # its dataset (for sample images)
    feature_dim: int
    seconds: float  # feature extraction (cache reads when warm)
    backbone: Callable[[], FrozenBackbone]  # built when first called, shared by every model of the process
    num_sites: int  # every site of the data, also when only some were prepared (the Flower apps)
    lora_blocks: tuple[int, ...] = ()  # the backbone blocks given LoRA (the features are their stem's tokens)

    @property
    def crf(self) -> DenseCRF | None:
        return crf_of(self.config)

    @property
    def head_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.head_precision == "bf16" else None

    def encoder(self) -> AdaptedEncoder | None:
        """A site's LoRA on the shared frozen backbone (None without LoRA)."""
        if not self.lora_blocks:
            return None
        m = self.config.model
        lora = LoRA(self.backbone(), rank=m.lora_rank, alpha=m.lora_alpha, blocks=self.lora_blocks,
                    targets=m.lora_targets)
        return AdaptedEncoder(self.backbone(), lora.to(self.device))

    def new_model(self) -> LocalModel:
        c, t, loss = self.config, self.config.train, self.config.loss
        if c.supervised:
            contrast = RegionContrast(c.data.num_classes, tau=loss.contrast_tau, weight=loss.contrast_weight,
                                      threshold=loss.pseudo_threshold, max_anchors=loss.max_anchors,
                                      backend=t.backend)
            return SupervisedModel(self.feature_dim, c.data.num_classes, embed_dim=c.model.embed_dim,
                                   objective=loss.objective, contrast=contrast, lr=t.head_lr, backend=t.backend,
                                   head_dtype=self.head_dtype, encoder=self.encoder(), device=self.device,
                                   **self._moe_options())
        correspondence = CorrespondenceConfig.preset(loss.preset, feature_samples=loss.feature_samples)
        clusters = auto_k_max(c) if c.fed.k_auto else c.data.num_classes  # auto-K: the over-complete slots
        return SiteModel(self.feature_dim, c.model.code_dim, clusters, loss=correspondence, auto_k=c.fed.k_auto,
                         num_neighbors=loss.num_neighbors, head_lr=t.head_lr, probe_lr=t.probe_lr,
                         backend=t.backend, head_dtype=self.head_dtype, encoder=self.encoder(), device=self.device,
                         **self._moe_options())

    def _moe_options(self) -> dict:
        m = self.config.model
        return dict(moe_experts=m.moe_experts, moe_hidden=m.moe_hidden, moe_router=m.moe_router,
                    moe_balance=m.moe_balance)

    def site_model(self, name: str) -> LocalModel:
        """Site ``name``'s initial model, seeded by the config's seed and the name: the same
        whenever (and in whichever process) it is built."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(zlib.crc32(f"{self.config.seed}/{name}".encode()))
            return self.new_model()

    def clients(self) -> dict[str, Client]:
        """One client per site, or for ``centralized`` one holding every site's data (kNN
        positives are still found within each site)."""
        fed, t = self.config.fed, self.config.train
        options = dict(local_steps=t.local_steps, batch_size=t.batch_size, distill_weight=fed.distill_weight,
                       distill=fed.distill, personal_steps=fed.personal_steps)
        if not self.config.supervised:
            for name, d in self.train.items():  # positives are drawn among a site's own images
                if self.config.loss.num_neighbors > len(d) - 1:
                    raise ConfigError(f"config key 'loss.num_neighbors' = {self.config.loss.num_neighbors}, but site "
                                      f"{name!r} has {len(d)} images, so at most {len(d) - 1} neighbours")
        if fed.strategy != "centralized":  # models and features are made when a site is first used
            return {name: Client(name, d, partial(self.site_model, name), **options) for name, d in self.train.items()}
        data = [d.get() for d in self.train.values()]
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

    def strategy(self, arrays: dict[str, torch.Tensor]) -> Strategy:
        """The config's strategy; ``arrays`` (a model's) checks the ``fed.local_params`` names. The
        mixture of experts (``model.moe_experts``) is always a local group: it never travels."""
        strategy = strategy_from_config(self.config.fed, self.config.seed, num_clients=self.num_sites)
        if self.config.model.moe_experts:
            strategy.local_params += (MOE,)
        for group in self.config.fed.local_params:
            if not any(k == group or k.startswith(group + ".") for k in arrays):
                groups = sorted({".".join(k.split(".")[:2]) for k in arrays} | {k.split(".")[0] for k in arrays})
                raise ConfigError(f"config key 'fed.local_params': {group!r} names no parameters; choose from {groups}")
        return strategy

    def limits(self) -> dict:
        """What the server accepts from a site (``fed.Server``)."""
        return {"max_samples": self.config.fed.max_samples, "max_update_ratio": self.config.fed.max_update_ratio}

    def federation(self, after_round=None, spill_dir: str | Path | None = None) -> Federation:
        """The in-process federation over every site, seeded by the config; unless
        ``fed.keep_clients_in_memory``, clients wait in ``spill_dir`` between rounds when only some
        are sampled (``Federation``)."""
        fed = self.config.fed
        clients = self.clients()
        global_model = self.new_model()  # from the config's seed (prepare)
        try:
            return Federation(clients, self.strategy(global_model.arrays()), global_model, sites=self.train,
                              shared=self.shared, num_classes=self.config.data.num_classes, rounds=fed.rounds,
                              generator=torch.Generator().manual_seed(self.config.seed), min_clients=fed.min_clients,
                              clients_per_round=fed.clients_per_round, fraction=fed.fraction, after_round=after_round,
                              limits=self.limits(), eval_every=fed.eval_every,
                              spill_dir=None if fed.keep_clients_in_memory else spill_dir, crf=self.crf)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def crf_of(config: Config) -> DenseCRF | None:
    """The dense CRF that also scores the predictions (``eval.crf``), or None."""
    e = config.eval
    if not e.crf:
        return None
    return DenseCRF(e.crf_iterations, e.crf_gaussian_xy, e.crf_gaussian_weight, e.crf_bilateral_xy, e.crf_bilateral_rgb,
                    e.crf_bilateral_weight, e.crf_alpha)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(config: Config, sites: list[str] | None = None) -> Setup:
    """Extracts (or finds in the cache) the features of the shared set and of every site, or only
    of ``sites``. The shared set is read now; a site whose cache is complete on disk is a
    ``LazyFeatureSet``, read when a round or a score first needs it. The backbone is built only
    if something must be extracted."""
    t0 = time.perf_counter()
    data, model = config.data, config.model
    device = resolve_device(config.device)
    precision = resolve_precision(model.precision, device)
    built = []

    def backbone() -> FrozenBackbone:
        if not built:  # seeded on its own: the models' initializations do not depend on whether it was built
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)
                built.append(FrozenBackbone(model.backbone, weights=model.weights, precision=precision).to(device))
        return built[0]

    torch.manual_seed(config.seed)
    datasets, evaluation, labelled = make_data(data, config.seed, config.cache_dir)
    num_sites = len(datasets)
    if sites is not None:
        unknown = sorted(set(sites) - set(datasets))
        if unknown:
            raise ConfigError(f"unknown sites {unknown}; the data has {sorted(datasets)}")
        datasets = {name: datasets[name] for name in sites}
    base_key = {"data": config.to_dict()["data"], "seed": config.seed, "backbone": model.backbone,
                "weights": weights_digest(model.weights, config.seed), "precision": precision}
    lora_blocks = ()
    if model.lora_rank > 0:  # the cache keeps the input of the first adapted block
        blocks = backbone().num_blocks
        if model.lora_blocks > blocks:
            raise ConfigError(f"config key 'model.lora_blocks' = {model.lora_blocks}, but {model.backbone} has "
                              f"{blocks} blocks")
        lora_blocks = tuple(range(blocks - model.lora_blocks, blocks))
        base_key["stem_block"] = lora_blocks[0]

    def features(name, ds, lazy=True):
        key = {**base_key, "split": name, "images": len(ds), "resolution": ds.image_size}
        if hasattr(ds, "files"):  # images on disk: the cache follows their contents, not their names
            key["files"] = files_digest(ds.files(), Path(config.cache_dir) / "file-digests.json")

        def read():
            return extract(backbone, ds, key, config.cache_dir, device, flip=True,
                           stem_block=lora_blocks[0] if lora_blocks else None, progress=_progress(f"features {name}"))
        if not lazy:
            return read()
        if not on_disk(ds, key, config.cache_dir, flip=True):
            read()  # extract now; the set is read again when used
        return LazyFeatureSet(len(ds), read)

    train = {name: features(name, ds) for name, ds in datasets.items()}
    for name, ds in datasets.items():  # read only by the CRF (eval.crf)
        train[name].images = ds
    for name, classes in (labelled or {}).items():
        if name in train:  # the site annotates only ``classes``
            known = torch.zeros(data.num_classes, dtype=torch.bool)
            known[classes] = True
            train[name].labelled = known.expand(len(datasets[name]), -1)
    shared = features("eval", evaluation, lazy=False)
    shared.images = evaluation
    head_precision = resolve_head_precision(model.head_precision, device)
    feature_dim = backbone().dim if lora_blocks else shared.features.shape[1]
    return Setup(config, device, precision, head_precision, train, shared, evaluation, feature_dim,
                 time.perf_counter() - t0, backbone, num_sites, lora_blocks)


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, leave=False, disable=not sys.stderr.isatty())
