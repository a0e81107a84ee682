"""A run directory and everything written into it: ``metrics.json`` (after every round),
``checkpoint/`` (every completed round), ``spill/`` (while the run lasts) and at the end
``model.safetensors`` and ``samples.safetensors``. The formats are described in docs/formats.md."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from fussfast._info import build_info
from fussfast.config import Config, ConfigError
from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD
from fussfast.eval import hungarian_scores, scores
from fussfast.features import FeatureSet
from fussfast.fed.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fussfast.fed.privacy import CentroidPrivacy
from fussfast.tasks import LocalModel, SiteModel

# May differ on --resume: fed.rounds (train on), the cache's place, and where client states wait
# between rounds (the results are the same).
RESUMABLE_CHANGES = ("fed.rounds", "cache_dir", "fed.keep_clients_in_memory")


class RunDir:
    """``path`` of a run of ``config`` on ``device`` with the backbone in ``precision`` and the
    head's products in ``head_precision``; ``shared``
    is the evaluation set (for the majority-class baseline), ``features_s`` the feature
    extraction time."""

    def __init__(self, path: str | Path, config: Config, device: torch.device, shared: FeatureSet,
                 features_s: float, started: float | None = None, *, precision: str | None = None,
                 head_precision: str | None = None):
        self.path, self.config, self.device, self.precision = Path(path), config, device, precision
        self.head_precision = head_precision
        with _writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self.baseline = majority_baseline(shared, config.data.num_classes)
        self.features_s, self.started = features_s, started if started is not None else time.perf_counter()

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def spill(self) -> Path:
        """Where the clients not in use wait between rounds (``fed.Federation``'s ``spill_dir``)
        while the run lasts."""
        return self.path / "spill"

    def remove_spill(self) -> None:
        """Removes the spill folder: at the end of a run, and at its start (what a killed run left)."""
        if self.spill.exists():
            with _writing(self.spill):
                shutil.rmtree(self.spill)

    def save_round(self, tensors: dict[str, torch.Tensor], state: dict, history: list[dict]) -> dict:
        """Checkpoints the round just completed (``state``: its JSON part), then rewrites metrics.json.
        A failed write (full disk, read-only directory) leaves the previous checkpoint whole."""
        with _writing(self.checkpoint):
            save_checkpoint(self.checkpoint, len(history), tensors, {"config": self.config.to_dict(), **state})
        return self.write_metrics(history)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The checkpoint, checked against metrics.json: its records must be the checkpoint's
        (metrics.json may lag one round: it is written after the checkpoint)."""
        tensors, state = load_checkpoint(self.checkpoint)
        path = self.path / "metrics.json"
        try:
            rounds = json.loads(path.read_text())["rounds"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path}: missing or unreadable beside the checkpoint") from None
        history = state["history"]
        same = isinstance(rounds, list) and json.dumps(rounds) == json.dumps(history[:len(rounds)])  # NaN-safe
        if not same or not len(history) - 1 <= len(rounds) <= len(history):
            raise CheckpointError(f"{path} and {self.checkpoint / 'state.json'} disagree on the rounds done; "
                                  "one of them was edited or comes from another run")
        return tensors, state

    def write_metrics(self, rounds: list[dict]) -> dict:
        metrics = {
            "config": self.config.to_dict(),
            "versions": {"fussfast": build_info()["version"], "torch": torch.__version__,
                         "python": platform.python_version()},
            "device": str(self.device),
            "precision": self.precision,
            "head_precision": self.head_precision,
            "baseline": {"majority": self.baseline},
            "rounds": rounds,
            "completed_rounds": len(rounds),
            "final": _final(rounds),
            "timings": {"features_s": self.features_s, "total_s": time.perf_counter() - self.started},
        }
        with _writing(self.path / "metrics.json"):
            tmp = self.path / "metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=1))
            tmp.replace(self.path / "metrics.json")
        return metrics

    def save_models(self, models: dict[str, LocalModel], shared: FeatureSet, evaluation, num_classes: int,
                    num_samples: int = 4) -> None:
        """``model.safetensors``: the scored models' arrays as ``<model>/<array>``;
        ``samples.safetensors``: the first shared images (uint8), ground truth and the first scored
        model's predictions; unsupervised, clusters are mapped to classes by the Hungarian matching
        (-1: unmatched cluster), with that model's ``centroid_response``."""
        _save(self.path / "model.safetensors",
              {f"{name}/{k}": v for name, m in models.items() for k, v in m.arrays().items()})
        model = next(iter(models.values()))
        n = min(num_samples, shared.features.shape[0])
        masks = shared.masks[:n]
        pred = model.predict(shared.features[:n], shared.flipped[:n] if shared.flipped is not None else None,
                             masks.shape[-2:]).cpu()
        images = torch.stack([evaluation[i][0] for i in range(n)])
        images = (images * torch.from_numpy(IMAGENET_STD) + torch.from_numpy(IMAGENET_MEAN)).clamp(0, 1)
        samples = {"image": (images * 255).round().to(torch.uint8), "mask": masks, "pred": pred}
        if model.matching == "hungarian":
            assignment = torch.tensor(hungarian_scores(model.confusion(shared, num_classes)).assignment)
            distance, usage = centroid_response(model, shared.features[:64])
            samples.update(pred=assignment[pred], assignment=assignment, centroid_distance=distance, usage=usage)
        _save(self.path / "samples.safetensors", samples)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors written to a temporary name and renamed: never a half-written file."""
    with _writing(path):
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)


@contextlib.contextmanager
def _writing(path: Path):
    """A failed write of ``path`` (full disk, read-only directory) is an OSError naming the path."""
    try:
        yield
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    except SafetensorError as e:  # safetensors reports its I/O errors as its own type
        raise OSError(f"cannot write {path}: {e}") from e


def _final(rounds: list[dict]) -> dict | None:
    """The scores of the last scored round (the last round always is, unless a run was cut)."""
    scored = [r for r in rounds if "global" in r]
    return {"global": scored[-1]["global"], "clients": scored[-1]["clients"]} if scored else None


def check_resumable(config: Config, path: str | Path) -> None:
    """Refuses to resume ``path`` with a config that would change the run."""
    state_file = Path(path) / "checkpoint" / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {state_file}")
    try:
        saved = json.loads(state_file.read_text())["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_file}: not valid JSON with a config ({type(e).__name__}: {e})") from None
    saved, now = _flat(saved) if isinstance(saved, dict) else {}, _flat(config.to_dict())
    defaults = _flat(Config().to_dict())  # a key newer than the checkpoint had its default then
    differ = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != saved.get(k, defaults[k])]
    if differ:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {differ}")
    fed = config.fed
    if fed.dp_epsilon:  # the noise was calibrated for the checkpoint's rounds
        privacy = CentroidPrivacy(fed.dp_epsilon, fed.dp_delta, fed.dp_clip,
                                  saved.get("fed.rounds", defaults["fed.rounds"]), fed.dp_accountant)
        try:
            privacy.check_rounds(fed.rounds)
        except ValueError as e:
            raise ConfigError(f"--resume: config key {e}") from None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def majority_baseline(data: FeatureSet, num_classes: int) -> dict:
    """Scores of predicting the most frequent class everywhere."""
    masks = data.masks[(data.masks >= 0) & (data.masks < num_classes)]
    counts = torch.bincount(masks, minlength=num_classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion[int(counts.argmax())] = counts
    return scores(confusion)


@torch.no_grad()
def centroid_response(model: SiteModel, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How distinct the centroids are to the data: ``1 - corr`` of two centroids' cosine
    responses over the pixels of ``features`` (0: they respond alike, collapsed prototypes), and
    how many pixels each centroid wins."""
    code = model.codes(features).double()
    z = torch.nn.functional.normalize(code.permute(0, 2, 3, 1).reshape(-1, code.shape[1]), dim=1)
    sim = z @ torch.nn.functional.normalize(model.probe.clusters.double(), dim=1).T
    usage = torch.bincount(sim.argmax(1), minlength=sim.shape[1])
    r = (sim - sim.mean(0)) / sim.std(0).clamp(min=1e-12)
    corr = (r.T @ r) / max(r.shape[0] - 1, 1)
    return (1 - corr).clamp(min=0).float().cpu(), usage.cpu()
