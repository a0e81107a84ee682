"""Round checkpoints: one safetensors file of tensors plus ``state.json`` (no pickle).

``DIR/checkpoint/state.json`` names the tensor file of the last completed round. Both files are
written to a temporary name and renamed, the JSON last, so an interrupt at any moment leaves the
previous checkpoint whole; older tensor files are removed only after the JSON points past them.
Nested state such as an optimizer's ``state_dict()`` is stored as a JSON skeleton whose tensor
leaves name entries of the tensor file. ``state.json`` records the tensor file's size and
SHA-256, and ``load_checkpoint`` refuses a file that does not match (``CheckpointError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fussfast._files import file_sha256, read_json

FORMAT = "fussfast-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and what is wrong."""


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj`` (dicts, lists, tuples, tensors, scalars); its tensors go into
    ``tensors`` under names that start with ``prefix``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"tensor": prefix}
    if isinstance(obj, dict):  # keys may be ints (optimizer state), so keep them as pairs
        return {"dict": [[k, flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list": [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {prefix}")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in skeleton:
        return tensors[skeleton["tensor"]]
    if "dict" in skeleton:
        return {k: unflatten(v, tensors) for k, v in skeleton["dict"]}
    if "list" in skeleton:
        return [unflatten(v, tensors) for v in skeleton["list"]]
    return skeleton["value"]


def under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` whose names start with ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def expect_like(found: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """``CheckpointError`` unless ``found`` has exactly ``want``'s names, shapes and dtypes."""
    if found.keys() != want.keys():
        raise CheckpointError(f"{what} differ: missing {sorted(want.keys() - found.keys())}, "
                              f"unexpected {sorted(found.keys() - want.keys())}")
    for k, v in want.items():
        if found[k].shape != v.shape or found[k].dtype != v.dtype:
            raise CheckpointError(f"{what}: {k} is {found[k].dtype} {list(found[k].shape)}, expected "
                                  f"{v.dtype} {list(v.shape)}")


def save_checkpoint(directory: str | Path, round: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"state-{round:05d}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / name)
    path = directory / name
    state = {"format": FORMAT, "round": round, "tensors": name, "bytes": path.stat().st_size,
             "sha256": file_sha256(path), **meta}
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, directory / "state.json")
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()
    return directory / "state.json"


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of the last completed round; ``FileNotFoundError`` with the path if
    there is none, ``CheckpointError`` naming the file if it is not a whole fussfast checkpoint."""
    path = Path(directory) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_json(path, CheckpointError)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    missing = [k for k in ("round", "tensors", "bytes", "sha256", "history", "clients") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: keys {missing} are missing")
    tensors = Path(directory) / str(state["tensors"])
    if tensors.parent != Path(directory) or not tensors.is_file():
        raise CheckpointError(f"{tensors}: the checkpoint's tensor file is missing")
    if tensors.stat().st_size != state["bytes"] or file_sha256(tensors) != state["sha256"]:
        raise CheckpointError(f"{tensors}: contents differ from the digest in {path.name} (truncated or changed)")
    if not isinstance(state["history"], list) or len(state["history"]) != state["round"]:
        raise CheckpointError(f"{path}: holds {len(state['history'])} round records for round {state['round']}")
    return load_file(str(tensors)), state
