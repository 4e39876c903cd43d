"""Door probes of evaluation photos, computed once: the embedding and quality metrics of each photo's
face, keyed by the SHA-256 of the file's bytes, per model version and minimum face size.

``manage.py evaluate_door`` embeds every probe photo as a door would (decode, detect, crop, embed,
measure quality). Trying another threshold, fusion rule or template strategy on the same photos
does not need that again: :class:`ProbeCache` keeps the result (or "no usable face") in
``<cache_dir>/door-probes-<model_version>-min<px>.npz``. The key is the file's digest, not its
path, so a renamed or replaced photo is never confused with another; the file name carries the
model version and the minimum face size, the two settings that change what a probe is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: A probe: the normalised embedding and the door's quality metrics; None: no usable face.
Probe = tuple[np.ndarray, dict[str, float]] | None


def file_digest(data: bytes) -> str:
    """The cache key of a photo: SHA-256 of its bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


class ProbeCache:
    """Probe embeddings per photo digest, loaded from and saved to one npz file (module docstring)."""

    def __init__(self, cache_dir: Path, *, model_version: str, min_face_px: int) -> None:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_version)
        self.path = Path(cache_dir) / f"door-probes-{safe}-min{int(min_face_px)}.npz"
        self.model_version = model_version
        self._found: dict[str, Probe] = {}
        self._dirty = False
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if str(data["model_version"]) != self.model_version:
                    logger.warning("probe cache %s belongs to another model version: ignored", self.path)
                    return
                keys, vectors = data["keys"].tolist(), data["vectors"]
                qualities, usable = json.loads(str(data["qualities"])), data["usable"]
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("probe cache %s unreadable (%s): starting empty", self.path, exc)
            return
        for i, key in enumerate(keys):
            self._found[key] = (vectors[i], qualities[i]) if usable[i] else None

    def __len__(self) -> int:
        return len(self._found)

    def __contains__(self, digest: str) -> bool:
        return digest in self._found

    def get(self, digest: str) -> Probe:
        return self._found[digest]

    def put(self, digest: str, probe: Probe) -> None:
        self._found[digest] = probe
        self._dirty = True

    def save(self) -> None:
        """Write the cache (atomically) when something was added."""
        if not self._dirty:
            return
        keys = sorted(self._found)
        dim = next((p[0].shape[0] for p in self._found.values() if p is not None), 1)
        vectors = np.zeros((len(keys), dim), dtype=np.float32)
        qualities: list[dict[str, float]] = []
        usable = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            probe = self._found[key]
            qualities.append({} if probe is None else probe[1])
            if probe is not None:
                vectors[i], usable[i] = probe[0], True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.stem}.tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            model_version=np.array(self.model_version),
            keys=np.array(keys),
            vectors=vectors,
            qualities=np.array(json.dumps(qualities)),
            usable=usable,
        )
        tmp.replace(self.path)
        self._dirty = False
