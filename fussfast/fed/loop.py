"""The in-process round loop: sample clients, fit, let the ``Server`` screen and aggregate,
evaluate."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from fussfast.eval import DenseCRF, mean_scores
from fussfast.features import FeatureSet
from fussfast.fed.checkpoint import CheckpointError, expect_like, under
from fussfast.fed.client import Client
from fussfast.fed.server import Server
from fussfast.fed.strategy import Strategy
from fussfast.tasks import LocalModel


class Federation:
    """Rounds of federated training over in-process ``clients``.

    Each round samples ``clients_per_round`` clients (0: ``ceil(fraction * n)``) with the
    seeded ``generator``; each sampled client fits from the global arrays; a client that raises
    is left out with its reason, and the ``Server`` screens and aggregates the rest (fewer than
    ``min_clients`` usable updates end the run with ``TooFewUpdates``).

    Scores: without personalization the global model is scored on every site's data and on the
    shared set. With local parameter groups (``local``, ``centralized``, ``fed.local_params``)
    each site is scored with its own model, and the global figure is the mean over the clients'
    models on the shared set. ``sites`` maps site names to their data for scoring; a site that is
    not a client (``centralized``) is scored with the only client's model.

    ``limits``: the ``Server``'s bounds on what a site may send. Rounds are scored every
    ``eval_every`` rounds and always at the last (``scored_round``); other records carry no
    ``global``/``clients``. ``after_round(federation)`` runs
    after every round (the run directory checkpoints there);
    ``state()`` holds everything needed to carry on (global arrays with the strategy's server
    state, every client's model, optimizer, MOON and strategy state, the RNG states, the round
    records) and ``load_state`` restores it,
    so that a resumed run reaches the same results as an uninterrupted one.

    ``crf``: when given, every score also has the CRF-refined figures under ``"crf"``.

    ``spill_dir``: when fewer clients are sampled per round than there are, each client's state is
    written there (``Client.spill``) as soon as its fit or scoring is done, and read back when it is
    next sampled or scored, so memory holds one client's model at a time, whatever the number of
    sites ever sampled. None, or every client sampled each round: every client stays in memory.
    """

    def __init__(self, clients: dict[str, Client], strategy: Strategy, global_model: LocalModel,
                 *, sites: dict[str, FeatureSet], shared: FeatureSet, num_classes: int, rounds: int,
                 generator: torch.Generator, min_clients: int = 1, clients_per_round: int = 0,
                 fraction: float = 1.0, after_round=None, limits: dict | None = None, eval_every: int = 1,
                 spill_dir: str | Path | None = None, crf: DenseCRF | None = None):
        n = len(clients)
        self.per_round = clients_per_round or max(1, math.ceil(fraction * n))
        if self.per_round > n:
            raise ValueError(f"fed.clients_per_round={self.per_round} but the federation has {n} clients")
        if min_clients > self.per_round:
            raise ValueError(f"fed.min_clients={min_clients} exceeds the {self.per_round} clients sampled per round")
        self.clients, self.strategy, self.global_model = clients, strategy, global_model
        self.sites, self.shared, self.num_classes = sites, shared, num_classes
        self.rounds, self.generator, self.after_round = rounds, generator, after_round
        self.eval_every, self.crf = eval_every, crf
        self.spill_dir = Path(spill_dir) if spill_dir is not None and self.per_round < n else None
        # named by the client's place, so that any site name makes a valid file name
        self.spill_files = {name: self.spill_dir / f"client-{i:06d}.safetensors" for i, name in enumerate(clients)
                            } if self.spill_dir is not None else {}
        self.server = Server(strategy, global_model.arrays(), min_clients=min_clients, **(limits or {}))
        self.history: list[dict] = []

    @property
    def current(self) -> dict[str, torch.Tensor]:
        return self.server.current

    @property
    def personalized(self) -> bool:
        return bool(self.strategy.local_params)

    def run(self) -> list[dict]:
        while len(self.history) < self.rounds:
            self.history.append(self.run_round(len(self.history) + 1))
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
        from tqdm.auto import tqdm

        t = time.perf_counter()
        sampled, replies = self.sample(), {}
        for name in tqdm(sampled, desc=f"round {r} clients", leave=False, disable=not sys.stderr.isatty()):
            try:
                replies[name] = self.clients[name].fit(self.current, self.strategy, self.generator)
            except Exception as e:  # a failing site drops out of this round, the run goes on
                replies[name] = f"{name}: failed with {type(e).__name__}: {e}"
            self._put_away(name)
        screened = self.server.round(r, replies, sites=list(self.clients))
        scores = self.evaluate() if scored_round(r, self.rounds, self.eval_every) else {}
        record = {"round": r, **scores, **screened, "seconds": time.perf_counter() - t}
        k = f" K̂ {screened['k_estimate']}" if "k_estimate" in screened else ""  # auto-K's estimate
        dp = f", DP epsilon spent {record['dp']['epsilon']:.3g}" if "dp" in record else ""
        if scores:
            g = scores["global"]
            crf = f" (CRF: mIoU {g['crf']['miou']:.1f} Dice {g['crf']['dice']:.1f})" if "crf" in g else ""
            print(f"round {r}/{self.rounds}: global mIoU {g['miou']:.1f} Dice {g['dice']:.1f} "
                  f"acc {g['acc']:.1f}{crf}{k}{dp}", file=sys.stderr)
        else:
            print(f"round {r}/{self.rounds}: trained{k} (scored every {self.eval_every} rounds){dp}", file=sys.stderr)
        return record

    def models(self) -> dict[str, LocalModel]:
        """The models scored: ``{"global": …}``, or when personalized every client's model with the
        global arrays loaded over its shared ones."""
        if not self.personalized:
            self.global_model.load_arrays(self.strategy.model_arrays(self.current))
            return {"global": self.global_model}
        shared = self.strategy.model_arrays(self.current)
        for c in self.clients.values():  # a personalized model: the global arrays plus the client's own
            c.model.load_arrays(shared)
        return {name: c.model for name, c in self.clients.items()}

    def _put_away(self, name: str) -> None:
        """Spills client ``name``'s state when this federation spills."""
        if name in self.spill_files:
            self.clients[name].spill(self.spill_files[name])

    def _scoring(self, name: str) -> LocalModel:
        """The model that scores site ``name`` (global arrays loaded); a personalized site never
        sampled gets a fresh model that is not kept."""
        if not self.personalized:
            return self.global_model
        client = self.clients.get(name) or next(iter(self.clients.values()))  # centralized: the only client
        model = client.scoring_model()
        model.load_arrays(self.strategy.model_arrays(self.current))
        return model

    def evaluate(self) -> dict:
        """One site at a time: each site's features are read, scored and released; a personalized
        site's model is scored on the shared set while it is loaded, then spilled again."""
        if not self.personalized:
            self.global_model.load_arrays(self.strategy.model_arrays(self.current))
        site_scores, on_shared = {}, {}
        for name, data in self.sites.items():
            model = self._scoring(name)
            site_scores[name] = model.scores(data.get(), self.num_classes, self.crf)
            data.release()
            if self.personalized and name in self.clients:
                on_shared[name] = model.scores(self.shared, self.num_classes, self.crf)
                self._put_away(name)
            del model  # spilled or not kept: gone before the next site's is built
        names = list(self.clients) if self.personalized else ["global"]
        per_model = [on_shared.get(n) or self._scoring(n).scores(self.shared, self.num_classes, self.crf)
                     for n in names]
        return {"global": mean_scores(per_model), "clients": site_scores}

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Clients never sampled have no state yet: only the started ones are saved."""
        tensors = {f"global/{k}": v for k, v in self.current.items()}
        clients = {name: c.state(f"client/{name}", tensors) for name, c in self.clients.items() if c.started}
        tensors["rng/generator"] = self.generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        device = self.global_model.device
        if device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
        return tensors, {"history": self.history, "clients": clients, "sites": list(self.clients)}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restores ``state()``; a state that does not fit this federation (other clients, arrays
        of other names, shapes or dtypes) raises ``CheckpointError`` and changes nothing."""
        sites = meta.get("sites", list(meta["clients"]))  # older checkpoints saved every client
        if set(sites) != set(self.clients) or not set(meta["clients"]) <= set(self.clients):
            raise CheckpointError(f"checkpoint clients {sorted(sites)} differ from {sorted(self.clients)}")
        current = under(tensors, "global/")
        expect_like(current, self.current, "the checkpoint's global arrays")
        saved = {name: c for name, c in self.clients.items() if name in meta["clients"]}
        for name, c in saved.items():  # a model of the client's shapes, not kept unless started
            expect_like(under(tensors, f"client/{name}/model/"), c.scoring_model().arrays(), f"client {name}'s arrays")
        missing = [k for k in ("rng/generator", "rng/torch") if k not in tensors]
        if missing:
            raise CheckpointError(f"the checkpoint has no {missing}")
        self.server.current = current
        for name, c in saved.items():
            try:
                c.load_state(f"client/{name}", tensors, meta["clients"][name])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"client {name}'s optimizer state does not fit: {e}") from None
            self._put_away(name)
        self.generator.set_state(tensors["rng/generator"])
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and self.global_model.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.global_model.device)
        self.history = meta["history"]


def scored_round(r: int, rounds: int, every: int) -> bool:
    """Whether round ``r`` of ``rounds`` is scored when scoring every ``every`` rounds (0: only the last)."""
    return r == rounds or (every > 0 and r % every == 0)
