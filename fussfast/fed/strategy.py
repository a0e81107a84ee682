"""Server-side aggregation: FedAvg, FedProx and the FUSS paper's FedCC-kMeans / FedCC-Maximin.

A client's upload is an ``Update``: named arrays (the head's parameters, ``"centroids"`` [K, D]),
its sample count and metrics. ``Strategy.aggregate(round, updates, current)`` returns the new
global arrays. Names that start with one of ``local_params`` stay on the clients (FUSS's
"encoder" variant keeps ``centroids`` local; pFedSAM-style adapters keep their modules local).
Only the head and the centroids travel; the frozen backbone never does.

A new strategy is a ``Strategy`` subclass here with ``@register(name)``, and an ``options``
classmethod if it reads config keys (``fed.<key>``, declared in ``fussfast/config.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fussfast.losses import moon_contrast
from fussfast.ops import kmeans, maximin
from fussfast.ops._boundary import METRICS, accumulation_dtype

CENTROIDS = "centroids"
CC_METRICS = METRICS  # FedCC clusters with the ops' metrics
PROX_SCOPES = ("head", "mlp")
_REGISTRY: dict[str, tuple[type, dict]] = {}


def register(name: str, **fixed):
    """Makes a Strategy class available as ``fed.strategy = name`` (``fixed``: its constructor
    arguments for that name)."""

    def add(cls):
        _REGISTRY[name] = (cls, fixed)
        return cls

    return add


@dataclass
class Update:
    client: str
    arrays: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict = field(default_factory=dict)


def check_update(update: Update, current: dict[str, torch.Tensor], *, max_samples: int | None = None,
                 max_ratio: float | None = None) -> str | None:
    """Why an update must be left out of the round, or None if it is usable: no samples or more
    than ``max_samples``, a non-finite loss, missing or extra arrays, another shape or dtype,
    NaN/Inf, or a change from ``current`` (the shared global arrays) whose norm exceeds
    ``max_ratio`` times the global arrays' norm."""
    name = update.client
    if not isinstance(update.num_samples, int) or update.num_samples <= 0:
        return f"{name}: no samples"
    if max_samples is not None and update.num_samples > max_samples:
        return f"{name}: claims {update.num_samples} samples, more than fed.max_samples={max_samples}"
    loss = update.metrics.get("loss")
    if loss is not None and not math.isfinite(loss):
        return f"{name}: its training loss is {loss}"
    missing, extra = current.keys() - update.arrays.keys(), update.arrays.keys() - current.keys()
    if missing or extra:
        return f"{name}: arrays differ from the global model (missing {sorted(missing)}, extra {sorted(extra)})"
    change, size = 0.0, 0.0
    for key, value in update.arrays.items():
        if value.shape != current[key].shape:
            return f"{name}: {key} has shape {list(value.shape)}, expected {list(current[key].shape)}"
        if value.dtype != current[key].dtype:
            return f"{name}: {key} is {value.dtype}, expected {current[key].dtype}"
        if not torch.isfinite(value).all():
            return f"{name}: {key} contains NaN or Inf"
        if value.is_floating_point():
            change += float((value.double() - current[key].double()).square().sum())
            size += float(current[key].double().square().sum())
    if max_ratio is not None and math.sqrt(change) > max_ratio * max(math.sqrt(size), 1e-12):
        return (f"{name}: its update changes the model by {math.sqrt(change):.3g}, more than "
                f"fed.max_update_ratio={max_ratio} times the model's norm {math.sqrt(size):.3g}")
    return None


class Strategy:
    """Averages every shared array (uniformly, or weighted by sample count). Subclasses change
    how the centroids are combined, or add a client-side term."""

    name = "fedavg"
    code_terms = False  # whether client_contrast adds a term (clients then keep their previous head)

    def __init__(self, *, weighted: bool = True, local_params: tuple[str, ...] = ()):
        self.weighted, self.local_params = weighted, tuple(local_params)

    @classmethod
    def options(cls, fed, seed: int) -> dict:
        """Constructor arguments from a config's ``fed`` section (a ``FedConfig``)."""
        return {"weighted": fed.weighted, "local_params": tuple(fed.local_params)}

    def is_local(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.local_params)

    def weights(self, updates: list[Update]) -> torch.Tensor:
        w = torch.tensor([float(u.num_samples) if self.weighted else 1.0 for u in updates], dtype=torch.float64)
        return w / w.sum()

    def aggregate(self, round: int, updates: list[Update], current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not updates:
            raise ValueError(f"{self.name}: no client updates to aggregate in round {round}")
        w = self.weights(updates)
        out = dict(current)
        for name, value in current.items():
            if self.is_local(name):
                continue
            if name == CENTROIDS:
                out[name] = self.combine_centroids([u.arrays[name] for u in updates], updates).to(value.dtype)
            else:
                stacked = torch.stack([u.arrays[name].double() for u in updates])
                out[name] = (w.view(-1, *[1] * value.dim()) * stacked).sum(0).to(value.dtype)
        return out

    def combine_centroids(self, centroids: list[torch.Tensor], updates: list[Update]) -> torch.Tensor:
        """FedAvg: index-wise average (centroid k of every client is assumed to mean the same)."""
        w = self.weights(updates)
        return (w.view(-1, 1, 1) * torch.stack([c.double() for c in centroids])).sum(0)

    def shared(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The arrays that travel between server and clients."""
        return {k: v for k, v in arrays.items() if not self.is_local(k)}

    def client_penalty(self, params: dict[str, torch.Tensor], global_params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Extra local loss term on the head's parameters (names as in the arrays: ``head.…``);
        none for FedAvg."""
        return torch.zeros(())

    def client_contrast(self, code, code_global, code_previous) -> torch.Tensor | None:
        """Extra local loss term on the codes (MOON); None: the strategy has none."""
        return None


@register("fedavg")
class FedAvg(Strategy):
    name = "fedavg"


@register("local")
class Local(Strategy):
    """No server: every array stays on its client (the ``local`` and ``centralized`` baselines)."""

    name = "local"

    def __init__(self, **kwargs):
        kwargs.pop("local_params", None)
        super().__init__(local_params=("head", CENTROIDS), **kwargs)

    @classmethod
    def options(cls, fed, seed):
        return {"weighted": fed.weighted}

    def aggregate(self, round, updates, current):
        return dict(current)


@register("moon")
class Moon(Strategy):
    """FedAvg aggregation plus MOON's model-contrastive client term on the per-pixel codes,
    ``mu * moon_contrast(z, z_global, z_previous, tau)`` (MOON: tau 0.5, mu 1 to 5)."""

    name = "moon"
    code_terms = True

    def __init__(self, *, mu: float = 1.0, tau: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not math.isfinite(mu) or mu < 0 or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"moon: mu must be >= 0 and tau > 0, got mu={mu!r}, tau={tau!r}")
        self.mu, self.tau = mu, tau

    @classmethod
    def options(cls, fed, seed):
        return {**super().options(fed, seed), "mu": fed.moon_mu, "tau": fed.moon_tau}

    def client_contrast(self, code, code_global, code_previous):
        return self.mu * moon_contrast(code, code_global, code_previous, self.tau)


@register("fedprox")
class FedProx(Strategy):
    """FedAvg aggregation plus the client term (mu / 2) * sum ||theta - theta_global||^2 over the
    head's parameters; ``scope="mlp"`` restricts it to the MLP branch, as FUSS's code does.
    Default: the whole head (the paper's formulation), mu = 0.001."""

    name = "fedprox"

    def __init__(self, *, mu: float = 0.001, scope: str = "head", **kwargs):
        super().__init__(**kwargs)
        if scope not in PROX_SCOPES:
            raise ValueError(f"fedprox: scope must be one of {PROX_SCOPES}, got {scope!r}")
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"fedprox: mu must be a finite number >= 0, got {mu!r}")
        self.mu, self.scope = mu, scope

    @classmethod
    def options(cls, fed, seed):
        return {**super().options(fed, seed), "mu": fed.mu, "scope": fed.prox_scope}

    def client_penalty(self, params, global_params):
        total = torch.zeros(())
        for name, p in params.items():
            if name == CENTROIDS or self.is_local(name) or (self.scope == "mlp" and ".mlp." not in f".{name}"):
                continue
            total = total + ((p - global_params[name].to(p)) ** 2).sum()
        return self.mu / 2 * total


@register("fedcc-maximin", method="maximin")
@register("fedcc-kmeans", method="kmeans")
class FedCC(Strategy):
    """FUSS's FedCC: heads are averaged, all clients' centroids are pooled (n_clients * K points)
    and re-clustered on the server. ``method="kmeans"``: k-means++ with n_init 10, the K centres
    become the global centroids; ``method="maximin"``: greedy farthest-point choice of K pooled
    centroids starting at client 0's centroid 0. Euclidean on the raw centroids as in FUSS, or
    ``metric="cosine"``."""

    def __init__(self, *, method: str = "kmeans", metric: str = "euclidean", seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if method not in ("kmeans", "maximin"):
            raise ValueError(f"fedcc: method must be 'kmeans' or 'maximin', got {method!r}")
        if metric not in CC_METRICS:
            raise ValueError(f"fedcc: metric must be one of {CC_METRICS}, got {metric!r}")
        self.method, self.metric, self.seed = method, metric, seed
        self.name = f"fedcc-{method}"

    @classmethod
    def options(cls, fed, seed):
        return {**super().options(fed, seed), "metric": fed.cc_metric, "seed": seed}

    def combine_centroids(self, centroids, updates):
        K = centroids[0].shape[0]
        # in the centroids' own precision: float32 kmeans is 2-4x faster than float64 here
        pooled = torch.cat([c.to(accumulation_dtype(c.dtype)) for c in centroids])
        if self.method == "maximin":
            return pooled[maximin(pooled, K, metric=self.metric, start=0)]
        return kmeans(pooled, K, metric=self.metric, n_init=10, seed=self.seed).centroids


STRATEGIES = tuple(_REGISTRY)


def make_strategy(name: str, **options) -> Strategy:
    """One of ``STRATEGIES`` with its options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    cls, fixed = _REGISTRY[name]
    return cls(**fixed, **options)


def strategy_from_config(fed, seed: int) -> Strategy:
    """The strategy of a config's ``fed`` section; ``centralized`` is ``local`` over one pooled site."""
    name = "local" if fed.strategy == "centralized" else fed.strategy
    cls, fixed = _REGISTRY[name]
    return cls(**fixed, **cls.options(fed, seed))
