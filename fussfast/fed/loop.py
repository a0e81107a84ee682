"""The in-process round loop: sample clients, fit, leave out bad updates, aggregate, evaluate,
checkpoint."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from fussfast.fed.checkpoint import load_checkpoint, save_checkpoint
from fussfast.fed.client import Client
from fussfast.fed.strategy import Strategy, check_update
from fussfast.pipeline import FeatureSet, SiteModel, SupervisedModel


class Federation:
    """Rounds of federated training over in-process ``clients``.

    Each round samples ``clients_per_round`` clients (0: ``ceil(fraction * n)``) with the
    seeded ``generator``; each sampled client fits from the global arrays; an update that raises,
    or fails ``check_update`` (NaN/Inf, wrong shapes), is left out with its reason; the strategy
    aggregates the rest, and fewer than ``min_clients`` usable updates end the run.

    Scores: without personalization the global model is scored on every site's data and on the
    shared set. With local parameter groups (``local``, ``centralized``, ``fed.local_params``)
    each site is scored with its own model, and the global figure is the mean over the clients'
    models on the shared set. ``sites`` maps site names to their data for scoring; a site that is
    not a client (``centralized``) is scored with the only client's model.

    With ``checkpoint_dir`` every completed round is checkpointed (global arrays, every client's
    model, optimizer and MOON state, the RNG states and the round records); ``resume()`` carries
    on after the last one and reaches the same results as an uninterrupted run.
    """

    def __init__(self, clients: dict[str, Client], strategy: Strategy, global_model: SiteModel | SupervisedModel,
                 *, sites: dict[str, FeatureSet], shared: FeatureSet, num_classes: int, rounds: int,
                 generator: torch.Generator, min_clients: int = 1, clients_per_round: int = 0,
                 fraction: float = 1.0, checkpoint_dir: str | Path | None = None, meta: dict | None = None,
                 after_round=None):
        n = len(clients)
        self.per_round = clients_per_round or max(1, math.ceil(fraction * n))
        if self.per_round > n:
            raise ValueError(f"fed.clients_per_round={self.per_round} but the federation has {n} clients")
        if min_clients > self.per_round:
            raise ValueError(f"fed.min_clients={min_clients} exceeds the {self.per_round} clients sampled per round")
        self.clients, self.strategy, self.global_model = clients, strategy, global_model
        self.sites, self.shared, self.num_classes = sites, shared, num_classes
        self.rounds, self.min_clients, self.generator = rounds, min_clients, generator
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.meta, self.after_round = meta or {}, after_round
        self.current = global_model.arrays()
        self.history: list[dict] = []

    @property
    def personalized(self) -> bool:
        return bool(self.strategy.local_params)

    def run(self) -> list[dict]:
        while len(self.history) < self.rounds:
            self.history.append(self.run_round(len(self.history) + 1))
            if self.checkpoint_dir is not None:
                tensors, meta = self.state()
                save_checkpoint(self.checkpoint_dir, len(self.history), tensors, meta)
            if self.after_round is not None:
                self.after_round(self)
        return self.history

    def sample(self) -> list[str]:
        names = list(self.clients)
        if self.per_round == len(names):
            return names
        picked = torch.randperm(len(names), generator=self.generator)[:self.per_round].sort().values
        return [names[i] for i in picked.tolist()]

    def run_round(self, r: int) -> dict:
        t = time.perf_counter()
        sampled = self.sample()
        updates, excluded, losses = [], {}, {}
        shared_now = self.strategy.shared(self.current)
        from tqdm.auto import tqdm

        for name in tqdm(sampled, desc=f"round {r} clients", leave=False, disable=not sys.stderr.isatty()):
            try:
                update = self.clients[name].fit(self.current, self.strategy, self.generator)
                losses[name] = update.metrics["loss"]
                reason = check_update(update, shared_now)
            except Exception as e:  # a failing site drops out of this round, the run goes on
                reason = f"{name}: failed with {type(e).__name__}: {e}"
            if reason:
                excluded[name] = reason
                print(f"round {r}: left out {reason}", file=sys.stderr)
            else:
                updates.append(update)
        if len(updates) < self.min_clients:
            raise RuntimeError(f"round {r}: only {len(updates)} usable client updates, fewer than "
                               f"fed.min_clients={self.min_clients}: {excluded}")
        self.current = self.strategy.aggregate(r, updates, self.current)
        size = sum(v.numel() * v.element_size() for v in shared_now.values())
        record = {"round": r, **self.evaluate(), "loss": losses, "sampled": sampled, "excluded": excluded,
                  "bytes": {name: {"down": size if name in sampled else 0,
                                   "up": size if name in sampled and name not in excluded else 0}
                            for name in self.clients},
                  "seconds": time.perf_counter() - t}
        print(f"round {r}/{self.rounds}: global mIoU {record['global']['miou']:.1f} "
              f"acc {record['global']['acc']:.1f}", file=sys.stderr)
        return record

    def models(self) -> dict[str, SiteModel | SupervisedModel]:
        """The models scored: ``{"global": …}``, or when personalized every client's model with the
        global arrays loaded over its shared ones."""
        if not self.personalized:
            self.global_model.load_arrays(self.current)
            return {"global": self.global_model}
        shared = self.strategy.shared(self.current)
        for c in self.clients.values():  # a personalized model: the global arrays plus the client's own
            c.model.load_arrays(shared)
        return {name: c.model for name, c in self.clients.items()}

    def evaluate(self) -> dict:
        models = self.models()
        only = next(iter(models.values())) if len(models) == 1 else None
        site_scores = {name: (models.get(name) or only).scores(data, self.num_classes)
                       for name, data in self.sites.items()}
        per_model = [m.scores(self.shared, self.num_classes) for m in models.values()]
        global_scores = {k: sum(s[k] for s in per_model) / len(per_model) for k in ("miou", "acc")}
        return {"global": global_scores, "clients": site_scores}

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"global/{k}": v for k, v in self.current.items()}
        clients = {name: c.state(f"client/{name}", tensors) for name, c in self.clients.items()}
        tensors["rng/generator"] = self.generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        device = self.global_model.device
        if device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
        return tensors, {**self.meta, "history": self.history, "clients": clients}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.current = {k.removeprefix("global/"): v for k, v in tensors.items() if k.startswith("global/")}
        for name, c in self.clients.items():
            c.load_state(f"client/{name}", tensors, meta["clients"][name])
        self.generator.set_state(tensors["rng/generator"])
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and self.global_model.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.global_model.device)
        self.history = meta["history"]

    def resume(self) -> dict:
        """Loads the last checkpoint in ``checkpoint_dir``; returns its JSON state."""
        tensors, meta = load_checkpoint(self.checkpoint_dir)
        if set(meta["clients"]) != set(self.clients):
            raise ValueError(f"checkpoint clients {sorted(meta['clients'])} differ from {sorted(self.clients)}")
        self.load_state(tensors, meta)
        return meta
