"""A federated client: one site's cached features and its local model, with fit and evaluate."""

from __future__ import annotations

import copy

import torch

from fussfast.fed.checkpoint import flatten, under, unflatten
from fussfast.fed.strategy import Strategy, Update
from fussfast.losses import code_distill
from fussfast.model import knn_table
from fussfast.features import FeatureSet
from fussfast.tasks import LocalModel


class Client:
    """``fit`` loads the global arrays (all but the strategy's local ones), trains
    ``local_steps`` steps with the strategy's client terms, and returns the shared arrays as an
    ``Update``. ``distill_weight`` adds a global→local distillation term between the
    representations (codes, or the supervised head's embeddings) of the round's starting model
    (the global arrays plus this client's local ones) and the local ones (``distill``: cosine or kl)."""

    def __init__(self, name: str, data: FeatureSet, model: LocalModel, *, local_steps: int,
                 batch_size: int, table: torch.Tensor | None = None, distill_weight: float = 0.0,
                 distill: str = "cosine"):
        self.name, self.data, self.model = name, data, model
        self.local_steps, self.batch_size = local_steps, batch_size
        self.table = knn_table(data.descriptors) if table is None else table
        self.distill_weight, self.distill = distill_weight, distill
        self.previous: dict[str, torch.Tensor] | None = None  # head after the last fit (MOON)

    @property
    def num_samples(self) -> int:
        return self.data.features.shape[0]

    def fit(self, global_arrays: dict[str, torch.Tensor], strategy: Strategy, generator: torch.Generator) -> Update:
        self.model.load_arrays(strategy.shared(global_arrays))
        head = self.model.head
        moon = strategy.code_terms and self.previous is not None
        reference = _frozen(head) if moon or self.distill_weight > 0 else None
        previous = None
        if moon:
            previous = _frozen(head)
            previous.load_state_dict(self.previous)
        anchor = {f"head.{k}": v.detach().clone() for k, v in head.named_parameters()}

        def extra(h, feats, code):
            total = strategy.client_penalty({f"head.{k}": p for k, p in h.named_parameters()}, anchor)
            if reference is not None:
                with torch.no_grad():
                    target = reference.representation(feats)
                    before = previous.representation(feats) if previous is not None else None
                if before is not None:
                    total = total + strategy.client_contrast(code, target, before)
                if self.distill_weight > 0:
                    total = total + self.distill_weight * code_distill(code, target, self.distill)
            return total

        extra.needs_code = reference is not None  # the step may skip codes no loss reads
        losses = self.model.train_steps(self.data, self.table, self.local_steps, self.batch_size, generator,
                                        extra=extra)
        if strategy.code_terms:
            self.previous = {k: v.detach().clone() for k, v in head.state_dict().items()}
        return Update(self.name, strategy.shared(self.model.arrays()), self.num_samples,
                      {"loss": sum(losses) / len(losses)})

    def evaluate(self, data: FeatureSet, num_classes: int) -> dict:
        return self.model.scores(data, num_classes)

    def state(self, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
        """Everything needed to resume this client, tensors into ``tensors``; returns the JSON part."""
        for k, v in self.model.arrays().items():
            tensors[f"{prefix}/model/{k}"] = v
        for k, v in (self.previous or {}).items():
            tensors[f"{prefix}/previous/{k}"] = v
        return {"optimizers": flatten(self.model.optimizer_states(), f"{prefix}/opt", tensors),
                "previous": self.previous is not None}

    def load_state(self, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.model.load_arrays(under(tensors, f"{prefix}/model/"))
        self.model.load_optimizer_states(unflatten(meta["optimizers"], tensors))
        self.previous = ({k: v.to(self.model.device) for k, v in under(tensors, f"{prefix}/previous/").items()}
                         if meta["previous"] else None)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).eval().requires_grad_(False)
