"""A federated client: one site's cached features and its local model, with fit and evaluate."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fussfast.fed.checkpoint import flatten, under, unflatten
from fussfast.fed.strategy import CONTROL, Strategy, Update
from fussfast.losses import code_distill
from fussfast.model import knn_table
from fussfast.features import FeatureSet, LazyFeatureSet
from fussfast.tasks import LocalModel

SPILLED = "client"  # the prefix of a spill file's tensor names


class Client:
    """``fit`` loads the global arrays (all but the strategy's local ones), trains
    ``local_steps`` steps with the strategy's client terms, and returns the shared arrays as an
    ``Update``. ``distill_weight`` adds a global→local distillation term between the
    representations (codes, or the supervised head's embeddings) of the round's starting model
    (the global arrays plus this client's local ones) and the local ones (``distill``: cosine or kl).

    ``personal_steps`` > 0 makes the round two-phase (pFedSAM's decoupled global-local
    fine-tuning): phase 1 trains the shared arrays for ``local_steps`` with the MoE bypassed
    and no distillation, and is the update; phase 2 then trains only the local groups (the MoE,
    ``fed.local_params``) for ``personal_steps`` with ``distill_weight · code_distill`` from the
    phase-1 global model (MoE bypassed) to the personalized one.

    For federations of many sites everything is made when first needed: ``model`` may be a
    function that builds it (``started`` tells whether it has been), ``data`` a ``LazyFeatureSet``
    that ``fit`` releases again, and the kNN table is computed at the first fit. ``spill`` writes
    the client's state (model, optimizers, MOON head, strategy state, kNN table) to a file and
    drops it from memory; the next use of ``model`` reads it back.

    ``strategy_state``: the client's own arrays of the strategy (FedDyn's g_k, SCAFFOLD's c_i),
    empty until its first fit; saved, restored and spilled with the rest."""

    def __init__(self, name: str, data: FeatureSet | LazyFeatureSet, model: LocalModel | Callable[[], LocalModel],
                 *, local_steps: int, batch_size: int, table: torch.Tensor | None = None,
                 distill_weight: float = 0.0, distill: str = "cosine", personal_steps: int = 0):
        self.name, self.data = name, data
        self._model, self._new_model = (model, None) if isinstance(model, LocalModel) else (None, model)
        self.local_steps, self.batch_size = local_steps, batch_size
        self._table = table
        self.distill_weight, self.distill = distill_weight, distill
        self.personal_steps = personal_steps
        self.previous: dict[str, torch.Tensor] | None = None  # head after the last fit (MOON)
        self.strategy_state: dict[str, torch.Tensor] = {}  # FedDyn's g_k, SCAFFOLD's c_i (CPU)
        self.spilled: Path | None = None  # the file holding this client's state while it is out of memory

    @property
    def model(self) -> LocalModel:
        if self._model is None:
            self._model = self._new_model()
            if self.spilled is not None:
                try:
                    self._read_back()
                except BaseException:
                    self._model = None  # never a fresh model in place of the spilled state
                    raise
        return self._model

    def scoring_model(self) -> LocalModel:
        """The model, or before it exists a fresh one that is not kept (scoring every site of a
        large federation builds no lasting model for the sites never sampled)."""
        return self.model if self.started else self._new_model()

    @property
    def started(self) -> bool:
        """Whether this client's model exists (it has been fit, scored or restored), in memory or spilled."""
        return self._model is not None or self.spilled is not None

    @property
    def in_memory(self) -> bool:
        return self._model is not None

    @property
    def table(self) -> torch.Tensor:
        if self._table is None:  # [N, KNN_WIDTH] indices: small, kept
            self._table = knn_table(self.data.get().descriptors)
        return self._table

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def fit(self, global_arrays: dict[str, torch.Tensor], strategy: Strategy, generator: torch.Generator) -> Update:
        self.model.load_arrays(strategy.model_arrays(global_arrays))  # first: reads a spilled state (MOON's too)
        received = strategy.shared(global_arrays)  # with the strategy's arrays (SCAFFOLD's c)
        two_phase = self.personal_steps > 0
        try:
            # phase 1 (or the one joint phase): the shared arrays, the MoE bypassed when two-phase
            with (self.model.phase(lambda k: not strategy.is_local(k), adapting=False) if two_phase
                  else contextlib.nullcontext()):
                losses = self.model.train_steps(self.data.get(), self.table, self.local_steps, self.batch_size,
                                                generator, extra=self._client_terms(strategy, received, not two_phase))
                teacher = _frozen(self.model.representation()) if two_phase else None  # the global model
            arrays = self.model.arrays()
            self.strategy_state, carried = strategy.client_finish(self.strategy_state, received, arrays,
                                                                  steps=self.local_steps, lr=self.model.head_lr,
                                                                  generator=generator)
            update = Update(self.name, {**strategy.shared(arrays), **carried}, self.num_samples,
                            {"loss": sum(losses) / len(losses)})
            if two_phase:  # phase 2: the local groups only, distilled from the phase-1 global model
                with self.model.phase(strategy.is_local):
                    self.model.train_steps(self.data.get(), self.table, self.personal_steps, self.batch_size,
                                           generator, extra=self._distill_term(teacher))
        finally:
            self.data.release()
        if strategy.code_terms:
            self.previous = {k: v.detach().clone() for k, v in self.model.head.state_dict().items()}
        return update

    def _client_terms(self, strategy: Strategy, received: dict[str, torch.Tensor], distill: bool):
        """``extra`` for ``train_steps``: the strategy's client terms (FedProx, FedDyn, SCAFFOLD,
        MOON) and, when ``distill``, the distillation from the round's starting model."""
        device = self.model.device
        moon = strategy.code_terms and self.previous is not None
        distill = distill and self.distill_weight > 0
        reference = _frozen(self.model.representation()) if moon or distill else None
        previous = None
        if moon:
            previous = _frozen(self.model.representation())
            previous.head.load_state_dict(self.previous)
        # the shared model parameters the terms read (the head's, LoRA's), their values at the
        # round's start, the strategy arrays received and this client's own strategy state
        params = {k: p for k, p in self.model.trained_parameters().items() if strategy.corrects(k)}
        anchor = {**{k: v.to(device) for k, v in received.items() if k.startswith(CONTROL)},
                  **{k: p.detach().clone() for k, p in params.items()}}
        own = {k: v.to(device) for k, v in self.strategy_state.items()}

        def extra(h, feats, code):
            total = strategy.client_penalty(params, anchor, own)
            if reference is not None:
                with torch.no_grad():
                    target = reference(feats)
                    before = previous(feats) if previous is not None else None
                if before is not None:
                    total = total + strategy.client_contrast(code, target, before)
                if distill:
                    total = total + self.distill_weight * code_distill(code, target, self.distill)
            return total

        extra.needs_code = reference is not None  # the step may skip codes no loss reads
        extra.after_step = lambda: strategy.client_step(params, anchor, own, lr=self.model.head_lr)
        return extra

    def _distill_term(self, teacher: torch.nn.Module):
        """Phase 2's ``extra``: ``distill_weight · code_distill(local, teacher)``; None when 0."""
        if self.distill_weight == 0:
            return None

        def extra(h, feats, code):
            with torch.no_grad():
                target = teacher(feats)
            return self.distill_weight * code_distill(code, target, self.distill)

        extra.needs_code = True
        return extra

    def evaluate(self, data: FeatureSet, num_classes: int, crf=None) -> dict:  # crf: an eval.DenseCRF, or None
        return self.model.scores(data, num_classes, crf)

    def state(self, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
        """Everything needed to resume this client, tensors into ``tensors``; returns the JSON part.
        A spilled client's state is read from its file, without building its model."""
        if self._model is None and self.spilled is not None:
            saved, meta = _read_spill(self.spilled)
            arrays, optimizers = under(saved, f"{SPILLED}/model/"), unflatten(meta["state"]["optimizers"], saved)
            previous = under(saved, f"{SPILLED}/previous/") if meta["state"]["previous"] else None
            own = under(saved, f"{SPILLED}/strategy/")
        else:
            arrays, optimizers, previous = self.model.arrays(), self.model.optimizer_states(), self.previous
            own = self.strategy_state
        for k, v in arrays.items():
            tensors[f"{prefix}/model/{k}"] = v
        for k, v in (previous or {}).items():
            tensors[f"{prefix}/previous/{k}"] = v
        for k, v in own.items():
            tensors[f"{prefix}/strategy/{k}"] = v
        return {"optimizers": flatten(optimizers, f"{prefix}/opt", tensors), "previous": previous is not None}

    def load_state(self, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.model.load_arrays(under(tensors, f"{prefix}/model/"))
        self.model.load_optimizer_states(unflatten(meta["optimizers"], tensors))
        self.previous = ({k: v.to(self.model.device) for k, v in under(tensors, f"{prefix}/previous/").items()}
                         if meta["previous"] else None)
        self.strategy_state = under(tensors, f"{prefix}/strategy/")  # none in older checkpoints

    def spill(self, path: Path) -> None:
        """Writes this client's state to ``path`` (safetensors, the JSON part in its header) and
        drops it from memory; the next use of ``model`` reads it back and removes the file. A
        client with nothing in memory is left as it is."""
        if self._model is None:
            return
        tensors: dict[str, torch.Tensor] = {}
        meta = {"site": self.name, "state": self.state(SPILLED, tensors), "table": self._table is not None}
        if self._table is not None:  # derived from the features, but kept to spare the recomputation
            tensors[f"{SPILLED}/knn_table"] = self._table
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
                      metadata={"client": json.dumps(meta)})
        except SafetensorError as e:  # safetensors reports its I/O errors as its own type
            raise OSError(f"cannot write {path}: {e}") from e
        self._model, self.previous, self._table, self.spilled = None, None, None, path
        self.strategy_state = {}

    def _read_back(self) -> None:
        """Restores the spilled state into the freshly built ``_model``."""
        tensors, meta = _read_spill(self.spilled)
        self.load_state(SPILLED, tensors, meta["state"])
        if meta["table"]:
            self._table = tensors[f"{SPILLED}/knn_table"]
        self.spilled.unlink()  # from now on the state in memory is the current one
        self.spilled = None


def _read_spill(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["client"])


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).eval().requires_grad_(False)
