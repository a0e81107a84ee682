"""On-disk cache of frozen-backbone features: safetensors shards plus a JSON manifest.

One cache directory per key (dataset, split, backbone, weights digest, resolution, crop,
precision): ``root/<sha256 of the key>/``. Features are stored in float16 with the images'
kNN descriptors in float32 and, when given, their masks in int16, ``shard_size`` images per shard. The manifest is rewritten
atomically after every shard, so an interrupted extraction resumes at the first missing shard.
Each shard's size and sha256 are recorded; a shard that no longer matches (truncated, changed)
or a manifest for another key is detected and rebuilt, never used. Reading memory-maps the
shards: no copy until a tensor is touched. ``on_disk()`` is the cheap check (manifest and shard
sizes, no hashing) for deciding, at the start of a run, whether a cache must be built now or can
be opened later. No pickle anywhere.

``cached_json`` keeps small derived facts (a split's per-image classes) in ``root/json/`` with the
same habits: keyed on what determines them, written atomically, checked against their digest.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fussfast._files import file_sha256

FORMAT = 2  # 2: shards may hold the images' masks
_DTYPES = {"F16": torch.float16, "F32": torch.float32, "I16": torch.int16}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _value_sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def cached_json(root: str | Path, key: dict, compute: Callable[[], Any]) -> Any:
    """``compute()`` (a JSON value), kept in ``root/json/<digest of key>.json`` with its key and its
    sha256. A file for another key, unreadable, or whose value no longer matches its sha256 is
    recomputed and replaced atomically (a per-process temporary name: Flower's processes share
    the cache)."""
    key = json.loads(json.dumps(key))  # tuples become lists, as they read back
    path = Path(root) / "json" / f"{key_digest(key)}.json"
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key and stored["sha256"] == _value_sha(stored["value"]):
            return stored["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = json.loads(json.dumps(compute()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "sha256": _value_sha(value), "value": value}))
    os.replace(tmp, path)
    return value


def files_digest(paths: Sequence[Path], memo: Path) -> str:
    """A digest of the contents of ``paths`` (in order), so that a cache keyed on it goes stale
    when a file changes under the same name. Each file's sha256 is remembered in ``memo`` with its
    size, mtime and ctime and recomputed only when one of them changed: a write always moves
    ctime, which no tool can set back."""
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    h, changed = hashlib.sha256(), False
    for path in paths:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = known.get(str(path))
        if entry is None or entry[:3] != stamp:
            entry, changed = [*stamp, file_sha256(Path(path))], True
            known[str(path)] = entry
        h.update(f"{path}\0{entry[3]}\n".encode())
    if changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return h.hexdigest()[:32]


class FeatureCache:
    """Features of ``num_images`` images for one cache key.

    ``ensure(extract)`` builds whatever is missing: ``extract(start, stop)`` must return
    ``(features [n, C, h, w], descriptors [n, C])`` for images ``start..stop``, optionally with
    ``masks [n, H, W]`` third. ``features()``, ``descriptors()`` and ``masks()`` then return the
    whole cache, memory-mapped (``masks()`` as int64, a copy); ``close()`` drops the maps.
    """

    def __init__(self, root: str | Path, key: dict, num_images: int, *, shard_size: int = 256):
        if num_images < 1 or shard_size < 1:
            raise ValueError("FeatureCache: num_images and shard_size must be >= 1")
        self.key, self.num_images, self.shard_size = dict(key), num_images, shard_size
        self.dir = Path(root) / key_digest(self.key)
        self.manifest_path = self.dir / "manifest.json"
        self._maps: list[tuple[mmap.mmap, dict]] = []
        self._verified = False  # ensure() has just checked every shard's digest

    @property
    def num_shards(self) -> int:
        return (self.num_images + self.shard_size - 1) // self.shard_size

    def _shard_path(self, i: int) -> Path:
        return self.dir / f"shard_{i:05d}.safetensors"

    def _read_manifest(self) -> dict:
        fresh = {"format": FORMAT, "key": self.key, "num_images": self.num_images,
                 "shard_size": self.shard_size, "shards": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return fresh
        same = all(manifest.get(k) == fresh[k] for k in ("format", "key", "num_images", "shard_size"))
        return manifest if same else fresh  # stale: built for something else

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def _valid(self, manifest: dict, i: int) -> bool:
        entry, path = manifest["shards"].get(str(i)), self._shard_path(i)
        if entry is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        return file_sha256(path) == entry["sha256"]

    def on_disk(self) -> bool:
        """Whether every shard is recorded and has its recorded size (no hashing: ``ensure`` and the
        first read still verify every shard's sha256)."""
        manifest = self._read_manifest()
        for i in range(self.num_shards):
            entry, path = manifest["shards"].get(str(i)), self._shard_path(i)
            if entry is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
        return True

    def missing_shards(self) -> list[int]:
        manifest = self._read_manifest()
        return [i for i in range(self.num_shards) if not self._valid(manifest, i)]

    def ensure(self, extract: Callable[[int, int], tuple[torch.Tensor, ...]],
               progress: Callable[[Sequence[int]], Sequence[int]] | None = None) -> None:
        """Extracts every missing or invalid shard (``progress`` may wrap the shard list, e.g. tqdm)."""
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self._read_manifest()
        todo = [i for i in range(self.num_shards) if not self._valid(manifest, i)]
        for i in progress(todo) if progress else todo:
            start, stop = i * self.shard_size, min(self.num_images, (i + 1) * self.shard_size)
            feats, desc, *masks = extract(start, stop)
            if any(t.shape[0] != stop - start for t in (feats, desc, *masks)):
                raise ValueError(f"FeatureCache: extract({start}, {stop}) returned {feats.shape[0]} images")
            tensors = {"features": feats.detach().to("cpu", torch.float16).contiguous(),
                       "descriptors": desc.detach().to("cpu", torch.float32).contiguous()}
            if masks:  # class ids and -1 (ignore) fit int16: 4x smaller than int64
                tensors["masks"] = masks[0].to("cpu", torch.int16).contiguous()
            path = self._shard_path(i)
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
            manifest["shards"][str(i)] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            self._write_manifest(manifest)
        self._verified = True

    def _open(self) -> list[tuple[mmap.mmap, dict]]:
        if not self._maps:
            missing = [] if self._verified else self.missing_shards()
            if missing:
                raise RuntimeError(f"FeatureCache: shards {missing[:5]} of {self.dir} are missing or "
                                   "corrupt; call ensure() to rebuild them")
            for i in range(self.num_shards):
                with open(self._shard_path(i), "rb") as f:
                    # copy-on-write: in-place edits of a returned tensor never reach the file
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                n = int.from_bytes(mm[:8], "little")  # safetensors: u64 header size, JSON header
                header = json.loads(mm[8:8 + n])
                header["__offset__"] = 8 + n
                self._maps.append((mm, header))
        return self._maps

    def _tensor(self, name: str) -> torch.Tensor:
        parts = []
        for mm, header in self._open():
            info = header[name]
            begin, end = (header["__offset__"] + o for o in info["data_offsets"])
            flat = torch.frombuffer(memoryview(mm)[begin:end], dtype=_DTYPES[info["dtype"]])
            parts.append(flat.view(info["shape"]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def features(self) -> torch.Tensor:
        """``[N, C, h, w]`` float16 (memory-mapped when the cache is a single shard)."""
        return self._tensor("features")

    def descriptors(self) -> torch.Tensor:
        return self._tensor("descriptors")

    def masks(self) -> torch.Tensor:
        """``[N, H, W]`` int64, -1: ignore (a KeyError if the cache was built without masks)."""
        return self._tensor("masks").long()

    def close(self) -> None:
        """Drops this object's maps; tensors returned earlier keep theirs alive until freed."""
        self._maps = []
