"""Server-side aggregation: FedAvg, FedProx, MOON, FedDyn, SCAFFOLD and the FUSS paper's
FedCC-kMeans / FedCC-Maximin.

A client's upload is an ``Update``: named arrays (the head's parameters, ``"centroids"`` [K, D]),
its sample count and metrics. ``Strategy.aggregate(round, updates, current)`` returns the new
global arrays. Names that start with one of ``local_params`` stay on the clients (FUSS's
"encoder" variant keeps ``centroids`` local; pFedSAM-style adapters keep their modules local).
Only the head and the centroids travel; the frozen backbone never does.

A new strategy is a ``Strategy`` subclass here with ``@register(name)``, and an ``options``
classmethod if it reads config keys (``fed.<key>``, declared in ``fussfast/config.py``).

Strategy state lives with the arrays it belongs to. The server's (FedDyn's h, SCAFFOLD's c) is
part of the global arrays under ``SERVER_ONLY`` (never sent) or ``CONTROL`` (sent with the model,
and an update carries an array of the same name back): so it is checkpointed, screened and its
bytes counted like the model. ``initial_state`` makes it; ``model_arrays`` leaves it out where a
model loads the arrays. A client's own state (FedDyn's g_k, SCAFFOLD's c_i) is a dict that
``Client`` keeps, saves and spills; ``client_penalty`` reads it and ``client_finish`` renews it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fussfast.fed.autok import estimate_k
from fussfast.fed.privacy import CentroidPrivacy
from fussfast.losses import moon_contrast
from fussfast.ops import kmeans, maximin
from fussfast.ops._boundary import METRICS, accumulation_dtype
from fussfast.tasks import ACTIVE

CENTROIDS = "centroids"
CONTROL = "control."  # strategy arrays that travel with the model (SCAFFOLD's c down, its delta c up)
SERVER_ONLY = "server."  # strategy arrays that stay on the server (FedDyn's h)
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
                 max_ratio: float | None = None, noised: tuple[str, ...] = ()) -> str | None:
    """Why an update must be left out of the round, or None if it is usable: no samples or more
    than ``max_samples``, a non-finite loss, missing or extra arrays, another shape or dtype,
    NaN/Inf, or a change from ``current`` (the shared global arrays) whose norm exceeds
    ``max_ratio`` times the global arrays' norm (the model's arrays; ``CONTROL`` arrays are a
    strategy's increments and ``noised`` arrays carry calibrated DP noise, both screened for names,
    shapes, dtypes and finiteness only)."""
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
        if value.is_floating_point() and not key.startswith(CONTROL) and key not in noised:  # not a model move
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
    privacy: CentroidPrivacy | None = None  # DP of the centroid uploads (FedCC, fed.dp_epsilon)
    noised: tuple[str, ...] = ()  # uploaded arrays that carry DP noise (left out of the update-ratio screening)

    def __init__(self, *, weighted: bool = True, local_params: tuple[str, ...] = (), num_clients: int = 1):
        self.weighted, self.local_params = weighted, tuple(local_params)
        self.num_clients = num_clients  # every site of the federation, sampled or not (FedDyn's m, SCAFFOLD's N)

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
            if self.is_local(name) or name.startswith((CONTROL, SERVER_ONLY)):  # state: the subclass's rule
                continue
            if name == CENTROIDS:
                out[name] = self.combine_centroids([u.arrays[name] for u in updates], updates).to(value.dtype)
            else:
                out[name] = mean64([u.arrays[name] for u in updates], w).to(value.dtype)
        return out

    def combine_centroids(self, centroids: list[torch.Tensor], updates: list[Update]) -> torch.Tensor:
        """FedAvg: index-wise average (centroid k of every client is assumed to mean the same)."""
        w = self.weights(updates)
        return (w.view(-1, 1, 1) * torch.stack([c.double() for c in centroids])).sum(0)

    def shared(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The arrays that travel between server and clients (``CONTROL`` state included)."""
        return {k: v for k, v in arrays.items() if not self.is_local(k) and not k.startswith(SERVER_ONLY)}

    def model_arrays(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The shared arrays a model loads: ``shared`` without the strategy's state."""
        return {k: v for k, v in self.shared(arrays).items() if not k.startswith(CONTROL)}

    def corrects(self, name: str) -> bool:
        """Whether the client terms and drift corrections (FedProx, FedDyn, SCAFFOLD) cover array
        ``name``: the shared model parameters, the head's and LoRA's (the centroids are a probe with
        its own optimizer and are averaged as FedAvg does; local groups never travel)."""
        return name.startswith(("head.", "lora.")) and not self.is_local(name)

    def corrected(self, arrays: dict[str, torch.Tensor]) -> list[str]:
        return [k for k in arrays if self.corrects(k)]

    def initial_state(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The server's strategy arrays for a model of ``arrays`` (none for FedAvg)."""
        return {}

    def with_state(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``arrays`` plus the strategy arrays they lack (idempotent: restored state is kept)."""
        model = {k: v for k, v in arrays.items() if not k.startswith((CONTROL, SERVER_ONLY))}
        return {**arrays, **{k: v for k, v in self.initial_state(model).items() if k not in arrays}}

    def client_penalty(self, params: dict[str, torch.Tensor], global_params: dict[str, torch.Tensor],
                       state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Extra local loss term on the shared model parameters ``params`` (names as in the arrays:
        ``head.…``, ``lora.…``); ``global_params``: their values at the round's start and the
        ``CONTROL`` arrays received; ``state``: the client's own strategy state. None for FedAvg."""
        return torch.zeros(())

    def client_step(self, params: dict[str, torch.Tensor], global_params: dict[str, torch.Tensor],
                    state: dict[str, torch.Tensor], *, lr: float) -> None:
        """After each local optimizer step: a correction of the step just taken, in place (SCAFFOLD's);
        arguments as ``client_penalty``'s. None for FedAvg."""

    def client_finish(self, state: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                      end: dict[str, torch.Tensor], *, steps: int, lr: float, generator: torch.Generator | None = None):
        """After ``steps`` local steps at learning rate ``lr`` from ``start`` (the arrays received)
        to ``end`` (the model's arrays): the client's new strategy state and the arrays its update
        carries on top of the model's shared ones (SCAFFOLD's ``CONTROL`` arrays; DP FedCC's noised
        centroids, which replace the raw ones). ``generator``: the fit's seeded generator, for
        noise. Nothing for FedAvg."""
        return state, {}

    def client_contrast(self, code, code_global, code_previous) -> torch.Tensor | None:
        """Extra local loss term on the codes (MOON); None: the strategy has none."""
        return None

    def round_notes(self) -> dict:
        """What the last ``aggregate`` adds to the round's record (FedCC's auto-K estimate)."""
        return {}


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

    def client_penalty(self, params, global_params, state=None):
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
    ``metric="cosine"``.

    ``auto_k`` (``fed.k_auto``): the global ``centroids`` are ``[k_max, D]`` slots of which the
    first ``centroids.active`` are in use (a model array: the sites' probes and the scored global
    model read it). Each round the sites' A active centroids are pooled and first aggregated as
    plain FedCC does with A clusters (one slot-level centroid per slot: the sites' copies of a
    slot are one tight group, since all start from the same global slots); then ``estimate_k``
    clusters those A slot centroids for each K in ``[k_min, A − 1]`` and merges near-duplicate
    slots into K̂ when the best mean silhouette reaches ``merge_silhouette``, else keeps all A
    (K̂ = A, exactly plain FedCC's result). The K̂ centres fill the first slots, the other slots
    keep their values, and ``centroids.active`` becomes K̂. Merge only: a merged slot stops
    training, so K̂ never rises again (it starts at k_max)."""

    def __init__(self, *, method: str = "kmeans", metric: str = "euclidean", seed: int = 0,
                 auto_k: bool = False, k_min: int = 2, merge_silhouette: float = 0.5,
                 privacy: CentroidPrivacy | None = None, **kwargs):
        super().__init__(**kwargs)
        if auto_k and any(self.is_local(n) for n in (CENTROIDS, ACTIVE)):
            raise ValueError("fedcc: auto-K (fed.k_auto) needs the centroids shared, not in fed.local_params")
        self.auto_k, self.k_min, self.merge_silhouette, self.notes = auto_k, k_min, merge_silhouette, {}
        if method not in ("kmeans", "maximin"):
            raise ValueError(f"fedcc: method must be 'kmeans' or 'maximin', got {method!r}")
        if metric not in CC_METRICS:
            raise ValueError(f"fedcc: metric must be one of {CC_METRICS}, got {metric!r}")
        self.method, self.metric, self.seed = method, metric, seed
        self.name = f"fedcc-{method}"
        self.privacy, self.noised = privacy, (CENTROIDS,) if privacy is not None else ()

    @classmethod
    def options(cls, fed, seed):
        privacy = CentroidPrivacy(fed.dp_epsilon, fed.dp_delta, fed.dp_clip, fed.rounds, fed.dp_accountant) \
            if fed.dp_epsilon > 0 else None
        return {**super().options(fed, seed), "metric": fed.cc_metric, "seed": seed, "auto_k": fed.k_auto,
                "k_min": fed.k_min, "merge_silhouette": fed.k_merge_silhouette, "privacy": privacy}

    def aggregate(self, round, updates, current):
        if not self.auto_k:
            return super().aggregate(round, updates, current)
        if ACTIVE not in current:
            raise ValueError(f"{self.name}: auto-K (fed.k_auto) needs a model that counts its active centroids")
        out = super().aggregate(round, updates, {k: v for k, v in current.items() if k not in (CENTROIDS, ACTIVE)})
        active, slots = int(current[ACTIVE][0]), current[CENTROIDS]
        # the slot-level centroids: FedCC's aggregation of the pooled n·A points into A clusters
        merged = self.combine_centroids([u.arrays[CENTROIDS][:active] for u in updates], updates)
        found = estimate_k(merged.to(accumulation_dtype(slots.dtype)), min(self.k_min, active), active,
                           method=self.method, metric=self.metric, seed=self.seed,
                           keep_below=self.merge_silhouette)
        centroids = slots.clone()
        centroids[:found.k] = found.centroids.to(slots.dtype)
        self.notes = {"k_estimate": found.k, "k_criterion": {str(k): v for k, v in found.criterion.items()},
                      "k_merge_silhouette": self.merge_silhouette}
        out.update({CENTROIDS: centroids, ACTIVE: torch.tensor([found.k], dtype=current[ACTIVE].dtype)})
        return {k: out[k] for k in current}

    def round_notes(self):
        return self.notes

    def client_finish(self, state, start, end, *, steps, lr, generator=None):
        """With ``privacy``: the site's upload carries its centroids clipped and noised
        (``CentroidPrivacy.privatize``, from the fit's ``generator``)."""
        if self.privacy is None or CENTROIDS not in end or self.is_local(CENTROIDS):
            return state, {}
        if generator is None:
            raise ValueError(f"{self.name}: differentially private centroids need the fit's generator")
        return state, {CENTROIDS: self.privacy.privatize(end[CENTROIDS], generator)}

    def combine_centroids(self, centroids, updates):
        K = centroids[0].shape[0]
        # in the centroids' own precision: float32 kmeans is 2-4x faster than float64 here
        pooled = torch.cat([c.to(accumulation_dtype(c.dtype)) for c in centroids])
        if self.method == "maximin":
            return pooled[maximin(pooled, K, metric=self.metric, start=0)]
        return kmeans(pooled, K, metric=self.metric, n_init=10, seed=self.seed).centroids


def mean64(values: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * values[k]`` in float64."""
    stacked = torch.stack([v.double() for v in values])
    return (weights.view(-1, *[1] * (stacked.dim() - 1)) * stacked).sum(0)


def _check_participants(name: str, updates: list[Update], num_clients: int) -> None:
    if len(updates) > num_clients:
        raise ValueError(f"{name}: {len(updates)} updates from a federation of {num_clients} clients")


@register("feddyn")
class FedDyn(Strategy):
    """FedDyn (Acar et al. 2021). Client k minimizes ``L_k(θ) − <g_k, θ> + α/2 ||θ − θ^{t−1}||²``
    and then sets ``g_k ← g_k − α (θ_k − θ^{t−1})``. The server keeps ``h`` (``server.<name>``):
    ``h ← h − α/m Σ_{k∈P} (θ_k − θ^{t−1})`` (m: every client), ``θ^t = mean_k θ_k − h/α``. The
    mean uses the strategy's weights (uniform: the paper; by sample count: ``fed.weighted``); h's
    sum is the paper's, so that h stays the mean of every client's g_k. Head parameters only: the
    centroids are averaged as FedAvg does."""

    name = "feddyn"

    def __init__(self, *, alpha: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"feddyn: alpha (fed.dyn_alpha) must be a finite number > 0, got {alpha!r}")
        self.alpha = alpha

    @classmethod
    def options(cls, fed, seed):
        return {**super().options(fed, seed), "alpha": fed.dyn_alpha}

    def initial_state(self, arrays):
        return {SERVER_ONLY + k: torch.zeros_like(arrays[k]) for k in self.corrected(arrays)}

    def aggregate(self, round, updates, current):
        out = super().aggregate(round, updates, current)
        _check_participants(self.name, updates, self.num_clients)
        w = self.weights(updates)
        for name in self.corrected(current):
            before, h = current[name].double(), current[SERVER_ONLY + name].double()
            h = h - self.alpha / self.num_clients * sum(u.arrays[name].double() - before for u in updates)
            out[SERVER_ONLY + name] = h.to(current[name].dtype)
            out[name] = (mean64([u.arrays[name] for u in updates], w) - h / self.alpha).to(current[name].dtype)
        return out

    def client_penalty(self, params, global_params, state=None):
        total = torch.zeros(())
        for name, p in params.items():
            if not self.corrects(name):
                continue
            total = total + self.alpha / 2 * ((p - global_params[name].to(p)) ** 2).sum()
            if state and name in state:
                total = total - (state[name].to(p) * p).sum()
        return total

    def client_finish(self, state, start, end, *, steps, lr, generator=None):
        renewed = {}
        for name in self.corrected(end):
            g = state[name].double() if name in state else 0.0
            renewed[name] = (g - self.alpha * (end[name].double() - start[name].double())).to(end[name].dtype)
        return renewed, {}


@register("scaffold")
class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020), option II. The server's control variate c travels as
    ``control.<name>``; client i's c_i stays with it. Each local step is corrected by ``c − c_i``:
    ``y ← y − η (d + c − c_i)`` with d the local optimizer's step direction (the gradient for the
    paper's SGD; Adam's ``m̂ / (√v̂ + ε)`` here: the correction is applied after Adam's step, so
    that c and c_i, which option II measures from the moves made, are in the units of the
    directions they correct). After K steps at learning rate η: ``c_i⁺ = c_i − c + (x − y_i) / (K η)``
    (the mean direction taken); the update carries
    y_i and ``Δc_i = c_i⁺ − c_i`` (as ``control.<name>``). Server: ``x ← x + η_g Σ_k w_k (y_k − x)``
    (w: the strategy's weights; uniform in the paper), ``c ← c + 1/N Σ_{k∈S} Δc_k`` (N: every
    client, so c stays the mean of every c_i). Head parameters only: the centroids are averaged
    as FedAvg does."""

    name = "scaffold"

    def __init__(self, *, server_lr: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not math.isfinite(server_lr) or server_lr <= 0:
            raise ValueError(f"scaffold: server_lr (fed.server_lr) must be a finite number > 0, got {server_lr!r}")
        self.server_lr = server_lr

    @classmethod
    def options(cls, fed, seed):
        return {**super().options(fed, seed), "server_lr": fed.server_lr}

    def initial_state(self, arrays):
        return {CONTROL + k: torch.zeros_like(arrays[k]) for k in self.corrected(arrays)}

    def aggregate(self, round, updates, current):
        out = super().aggregate(round, updates, current)
        _check_participants(self.name, updates, self.num_clients)
        w = self.weights(updates)
        for name in self.corrected(current):
            x, c = current[name].double(), current[CONTROL + name].double()
            step = mean64([u.arrays[name] for u in updates], w) - x
            out[name] = (x + self.server_lr * step).to(current[name].dtype)
            delta = sum(u.arrays[CONTROL + name].double() for u in updates) / self.num_clients
            out[CONTROL + name] = (c + delta).to(current[CONTROL + name].dtype)
        return out

    @torch.no_grad()
    def client_step(self, params, global_params, state, *, lr):
        for name, p in params.items():
            if not self.corrects(name) or CONTROL + name not in global_params:
                continue
            correction = global_params[CONTROL + name].to(p)
            if name in state:
                correction = correction - state[name].to(p)
            p.sub_(lr * correction)

    def client_finish(self, state, start, end, *, steps, lr, generator=None):
        renewed, deltas = {}, {}
        for name in self.corrected(end):
            c_i = state[name].double() if name in state else torch.zeros_like(end[name], dtype=torch.float64)
            new = c_i - start[CONTROL + name].double() + (start[name].double() - end[name].double()) / (steps * lr)
            renewed[name] = new.to(end[name].dtype)
            deltas[CONTROL + name] = (new - c_i).to(end[name].dtype)
        return renewed, deltas


STRATEGIES = tuple(_REGISTRY)


def make_strategy(name: str, **options) -> Strategy:
    """One of ``STRATEGIES`` with its options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    cls, fixed = _REGISTRY[name]
    return cls(**fixed, **options)


def strategy_from_config(fed, seed: int, num_clients: int = 1) -> Strategy:
    """The strategy of a config's ``fed`` section for a federation of ``num_clients`` sites;
    ``centralized`` is ``local`` over one pooled site."""
    name = "local" if fed.strategy == "centralized" else fed.strategy
    cls, fixed = _REGISTRY[name]
    return cls(**fixed, **cls.options(fed, seed), num_clients=num_clients)
