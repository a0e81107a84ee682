"""Reading files safely: content digests and JSON with errors that name the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, error: type[Exception] = ValueError) -> Any:
    """The JSON at ``path``; ``FileNotFoundError`` if there is none, ``error`` naming the file if
    it is not valid JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
