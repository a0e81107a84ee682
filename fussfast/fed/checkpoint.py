"""Round checkpoints: one safetensors file of tensors plus ``state.json`` (no pickle).

``DIR/checkpoint/state.json`` names the tensor file of the last completed round. Both files are
written to a temporary name and renamed, the JSON last, so an interrupt at any moment leaves the
previous checkpoint whole; older tensor files are removed only after the JSON points past them.
Nested state such as an optimizer's ``state_dict()`` is stored as a JSON skeleton whose tensor
leaves name entries of the tensor file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = "fussfast-checkpoint/1"


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


def save_checkpoint(directory: str | Path, round: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"state-{round:05d}.safetensors"
    tmp = directory / (name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / name)
    state = {"format": FORMAT, "round": round, "tensors": name, **meta}
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, directory / "state.json")
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()
    return directory / "state.json"


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of the last completed round; ``FileNotFoundError`` with the path if
    there is none, ``ValueError`` if it is not a fussfast checkpoint."""
    path = Path(directory) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = json.loads(path.read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format {state.get('format')!r})")
    return load_file(str(Path(directory) / state["tensors"])), state
