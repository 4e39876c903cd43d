"""Model updates on the device (embedding mode): offer -> download -> verify -> load beside -> self-test
-> switch, and back.

The server offers a model bundle with a signed ``model_offer`` command carrying the bundle's signed
manifest and the URL of its files (``faceengine/PROTOCOL.md``). :class:`ModelUpdater` works on it in
its own thread while the door keeps deciding with the running model:

1. **download** every file over HTTP(S), each request signed with the device key
   (:mod:`faceengine.protocol.model_download`), resuming a partial file with a ``Range`` request
   after an interruption, never writing more than the manifest's size;
2. **verify** with :func:`faceengine.protocol.model_manifest.bundle_verify`: the manifest's signature
   by the server key the agent already trusts for commands, that it allows this agent's version, and
   every file's size and SHA-256 (one flipped byte and the bundle is refused);
3. **load** the new embedder beside the running one;
4. **self-test** it on the few aligned faces the agent saw last (:class:`SampleCrops`, memory only):
   each face against a slightly altered copy of itself (same face) and against the others (different
   tracks): a model that loads but answers garbage (collapsed or noisy vectors) fails here;
5. **switch**: one attribute assignment in the agent (:meth:`EdgeAgent.switch_embedder`); a
   detection reads the embedder once, so it is never half old, half new; the choice is persisted
   (``chosen.json``) so that a restart keeps it, after verifying the bundle again.

Anything failing leaves the running model in place (``failed``, with a reason code); a
``model_rollback`` command, or a restart that finds the chosen bundle altered, goes back to the
previous model (``rolled_back``). When the previous model came from an earlier bundle, its bundle
and signed manifest are kept beside the chosen one, so a rollback returns to it also after a
restart, and stays there across the next one (not to the model in the agent's configuration).
Every step is reported at once in a heartbeat (``model_update_version`` / ``_state`` /
``_reason``), and the server shows it per device.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import queue
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edge_agent.vision import FaceCandidate, LocalEmbedder
from faceengine.protocol import Command, ModelUpdateState
from faceengine.protocol.model_download import request_token_sign
from faceengine.protocol.model_manifest import (
    ManifestError,
    ModelManifest,
    agent_version_allowed,
    bundle_verify,
    manifest_verify,
)

logger = logging.getLogger(__name__)

CHOSEN_FILE = "chosen.json"
_CHUNK = 1 << 16
#: the option of each built-in backend that names its weight file
PATH_OPTION = {"sface": "model_path", "facenet-casia": "graph_path", "facenet-vggface2": "weights_path"}
_PATH_OPTIONS = frozenset({"model_path", "graph_path", "weights_path", "cache_dir"})


class UpdateFailed(Exception):
    """A step of an update failed; ``code`` is what the heartbeat reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# --------------------------------------------------------------------------- samples and self-test


class SampleCrops:
    """The last few faces the agent sent (one per track), in memory only: the self-test's faces, with
    the vector the running model gave each (when it sent one: the self-test's reference, free)."""

    def __init__(self, keep: int = 8) -> None:
        self._items: collections.deque[tuple[FaceCandidate, np.ndarray | None, str | None]] = collections.deque(
            maxlen=keep
        )
        self._lock = threading.Lock()

    def add(self, candidate: FaceCandidate, vector: Any = None, model_version: str | None = None) -> None:
        kept = np.asarray(vector, dtype=np.float64) if vector is not None else None
        with self._lock:
            self._items.append((candidate, kept, model_version))

    def snapshot(self) -> list[FaceCandidate]:
        with self._lock:
            return [c for c, _, _ in self._items]

    def vectors(self, model_version: str) -> np.ndarray | None:
        """The samples' vectors of ``model_version``, in :meth:`snapshot` order (None unless all have one)."""
        with self._lock:
            items = list(self._items)
        if not items or any(v is None or m != model_version for _, v, m in items):
            return None
        return np.stack([v for _, v, _ in items])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class SelfTest:
    """What the self-test measured: the median similarity of each face to its altered copy, the
    median similarity between different faces, and how often a copy's nearest face is its own."""

    ok: bool
    reason: str
    samples: int
    same: float = 0.0
    different: float = 0.0
    rank1: float = 0.0
    seconds: float = 0.0


#: a face and its copy (90 % brightness, pixel noise of 4 grey levels): real models score it above
#: 0.93 (sface, facenet-casia on LFW faces); a model whose different faces all look alike (median
#: above ``max_different``) has collapsed: a shuffled-weights sface scores 0.94 between strangers
SELF_TEST_MIN_SAME = 0.8
SELF_TEST_MAX_DIFFERENT = 0.5
SELF_TEST_MIN_RANK1 = 0.75
#: the share of the running model's distance between the samples a new model must keep (see self_test)
SELF_TEST_MIN_SPREAD = 0.4


def _altered(candidate: FaceCandidate, rng: np.random.Generator) -> FaceCandidate:
    def alter(image: np.ndarray) -> np.ndarray:
        noisy = image.astype(np.float32) * 0.9 + rng.normal(0.0, 4.0, image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    return dataclasses.replace(candidate, crop=alter(candidate.crop), frame=alter(candidate.frame))


def self_test(
    embedder: LocalEmbedder,
    samples: Sequence[FaceCandidate],
    *,
    dim: int,
    min_samples: int = 3,
    min_same: float = SELF_TEST_MIN_SAME,
    max_different: float = SELF_TEST_MAX_DIFFERENT,
    min_rank1: float = SELF_TEST_MIN_RANK1,
    reference: LocalEmbedder | None = None,
    reference_vectors: np.ndarray | None = None,
) -> SelfTest:
    """Embed each sample and an altered copy of it with ``embedder``: the vectors must be finite, of
    ``dim`` values and not zero; a copy must stay close to its face (``same``), different faces far
    apart (``different``: the median over pairs) and a copy's nearest face must be its own.

    ``reference``: the running model. The samples may all be one person (a door one person uses all
    day): then any good model finds them alike (sface: 0.74 over six photos of one LFW person). A
    new model then passes when it keeps at least :data:`SELF_TEST_MIN_SPREAD` of the running model's
    distance between them (1 - median similarity): a collapsed model keeps about a seventh (0.96
    alike where sface says 0.74) or less. ``reference_vectors``: what the running model gave the
    samples already (it is not run again)."""
    started = time.perf_counter()
    if len(samples) < min_samples:
        return SelfTest(False, "self_test_no_samples", len(samples))
    rng = np.random.default_rng(0)
    try:
        both = embedder.embed_many([*samples, *(_altered(s, rng) for s in samples)]).astype(np.float64)
        vectors, copies = both[: len(samples)], both[len(samples) :]
    except Exception as exc:
        logger.warning("self-test: the model failed to embed: %s", exc)
        return SelfTest(False, "self_test_error", len(samples))
    if vectors.shape[1] != dim or copies.shape[1] != dim:
        return SelfTest(False, "self_test_wrong_dim", len(samples))
    norms = np.linalg.norm(vectors, axis=1)
    copy_norms = np.linalg.norm(copies, axis=1)
    if not (np.isfinite(vectors).all() and np.isfinite(copies).all()) or (norms == 0).any() or (copy_norms == 0).any():
        return SelfTest(False, "self_test_not_finite", len(samples))
    vectors /= norms[:, None]
    copies /= copy_norms[:, None]
    n = len(samples)
    same = float(np.median((vectors * copies).sum(axis=1)))
    pairs = vectors @ vectors.T
    different = float(np.median(pairs[~np.eye(n, dtype=bool)]))
    rank1 = float(np.mean(np.argmax(copies @ vectors.T, axis=1) == np.arange(n)))
    spread_ok = False
    if reference is not None and different > max_different:
        try:
            if reference_vectors is not None and len(reference_vectors) == n:
                ref = np.array(reference_vectors, dtype=np.float64)
            else:
                ref = reference.embed_many(list(samples)).astype(np.float64)
            ref /= np.linalg.norm(ref, axis=1, keepdims=True)
            ref_different = float(np.median((ref @ ref.T)[~np.eye(n, dtype=bool)]))
            spread_ok = (1.0 - different) >= SELF_TEST_MIN_SPREAD * (1.0 - ref_different)
        except Exception:  # the running model's opinion is a help, not a requirement
            logger.exception("self-test: the running model could not embed the samples")
    seconds = time.perf_counter() - started
    reason = ""
    if same < min_same:
        reason = "self_test_unstable"
    elif different > max_different and not spread_ok:
        reason = "self_test_collapsed"
    elif rank1 < min_rank1:
        reason = "self_test_confused"
    return SelfTest(not reason, reason, n, round(same, 4), round(different, 4), round(rank1, 3), round(seconds, 3))


# --------------------------------------------------------------------------- loading a bundle


def bundle_embedder_load(manifest: ModelManifest, folder: Path, *, threads: int | None) -> LocalEmbedder:
    """The embedder of a verified bundle: its backend, with the backend's path option pointing at the
    bundle's file (path options of the manifest, the server's own paths, are never used)."""
    option = PATH_OPTION.get(manifest.backend)
    if option is None:
        raise UpdateFailed("unknown_backend", f"this agent cannot run backend {manifest.backend!r}")
    if len(manifest.files) != 1:
        count = len(manifest.files)
        raise UpdateFailed("bad_options", f"backend {manifest.backend} loads one file, the bundle has {count}")
    # options naming files (the server's own paths) are dropped: only the bundle's verified file loads
    options: dict[str, Any] = {k: v for k, v in manifest.options.items() if k not in _PATH_OPTIONS}
    options[option] = str(folder / manifest.files[0].name)
    if manifest.backend == "facenet-casia":
        options["cache_dir"] = str(folder / "cache")  # the converted weights, beside the bundle
    try:
        return LocalEmbedder(manifest.backend, threads=threads, options=options, model_version=manifest.model_version)
    except Exception as exc:
        raise UpdateFailed("load_failed", f"{manifest.model_version} did not load: {exc}") from exc


# --------------------------------------------------------------------------- download


@dataclass
class DownloadStats:
    bytes: int = 0
    resumed: int = 0
    requests: int = 0


def download_file(
    url: str,
    dest: Path,
    *,
    size: int,
    authorize: Callable[[str], str],
    timeout_s: float = 30.0,
    attempts: int = 4,
    context: ssl.SSLContext | None = None,
    stats: DownloadStats | None = None,
) -> None:
    """Fetch ``url`` into ``dest`` (``size`` bytes), resuming ``dest.part`` with ``Range`` after an
    interruption (up to ``attempts`` requests). ``authorize(path)``: the ``Authorization`` value."""
    stats = stats if stats is not None else DownloadStats()
    part = dest.with_name(dest.name + ".part")
    if urlsplit(url).scheme not in ("http", "https"):
        raise UpdateFailed("bad_url", f"{url!r} is not http(s)")
    path = urlsplit(url).path
    last_error = ""
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            break
        request = urllib.request.Request(url, headers={"Authorization": authorize(path)})  # noqa: S310 (http(s) only, above)
        if have:
            request.add_header("Range", f"bytes={have}-")
        stats.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310
                if response.status == 206:
                    expected = f"bytes {have}-"
                    if not str(response.headers.get("Content-Range", "")).startswith(expected):
                        raise UpdateFailed("download_failed", "the server resumed at another offset")
                    mode = "ab"
                    stats.resumed += 1
                else:
                    mode, have = "wb", 0
                with part.open(mode) as out:
                    while chunk := response.read(_CHUNK):
                        if have + len(chunk) > size:
                            raise UpdateFailed("bad_file", f"{dest.name}: the server sent more than {size} bytes")
                        out.write(chunk)
                        have += len(chunk)
                        stats.bytes += len(chunk)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404, 416):
                raise UpdateFailed("download_refused", f"{dest.name}: HTTP {exc.code}") from None
            last_error = f"HTTP {exc.code}"
        except (OSError, TimeoutError) as exc:  # a cut connection: resume from what arrived
            last_error = str(exc) or type(exc).__name__
            logger.warning("download of %s interrupted at %d bytes (%s); resuming", dest.name, have, last_error)
            time.sleep(min(0.2 * 2**attempt, 2.0))
    if not part.exists() or part.stat().st_size != size:
        raise UpdateFailed("download_failed", f"{dest.name}: incomplete after {attempts} attempts ({last_error})")
    os.replace(part, dest)


# --------------------------------------------------------------------------- the updater


@dataclass
class UpdateStatus:
    model_version: str | None = None
    state: ModelUpdateState | None = None
    reason: str | None = None


class ModelUpdater:
    """Works on model offers and rollbacks in its own thread (one at a time, in order).

    ``current()`` is the embedder detections use now; ``switch(new)`` makes ``new`` that embedder
    (atomically); ``on_progress()`` reports (a heartbeat). ``directory`` holds the bundles and
    ``chosen.json``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        device_uid: str,
        private_key: Any,
        server_public_key: str,
        agent_version: str,
        current: Callable[[], LocalEmbedder | None],
        switch: Callable[[LocalEmbedder], None],
        samples: SampleCrops,
        on_progress: Callable[[], None] = lambda: None,
        threads: int | None = None,
        min_samples: int = 3,
        timeout_s: float = 30.0,
        tls_ca: Path | None = None,
    ) -> None:
        self.directory = Path(directory)  # made at the first offer
        self.device_uid = device_uid
        self.private_key = private_key
        self.server_public_key = server_public_key
        self.agent_version = agent_version
        self.current, self.switch = current, switch
        self.samples = samples
        self.on_progress = on_progress
        self.threads = threads
        self.min_samples = min_samples
        self.timeout_s = timeout_s
        self.context = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else None
        self.status = UpdateStatus()
        #: the embedder before the last switch (kept loaded: a rollback is one assignment)
        self.previous: LocalEmbedder | None = None
        #: the signed manifests of the running and the previous model when they came from a bundle
        #: (None: the configured model), so that a rollback is kept across restarts as well
        self.chosen_signed: Any = None
        self.previous_signed: Any = None
        #: an offer verified while too few faces were seen to self-test it (after a restart: the
        #: samples are kept in memory only); carried out by :meth:`faces_seen` once there are enough
        self._waiting: Command | None = None
        self._waiting_lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.last_self_test: SelfTest | None = None
        self.download_stats = DownloadStats()
        self._inbox: queue.SimpleQueue[tuple[str, Command] | None] = queue.SimpleQueue()
        self._busy = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="edge-model-update", daemon=True)
        self._thread.start()

    # -- entry points (the link's thread: never block) -------------------------------------

    def receive(self, command: Command) -> None:
        kind = "offer" if str(command.command) == "model_offer" else "rollback"
        with self._idle:
            self._busy += 1
        self._inbox.put((kind, command))

    def faces_seen(self) -> None:
        """After each face the agent sent: an offer waiting for faces goes on once there are enough
        to self-test it (the agent's send path: never blocks)."""
        if self._waiting is None or len(self.samples) < self.min_samples:
            return
        with self._waiting_lock:
            command, self._waiting = self._waiting, None
        if command is not None:
            logger.info("model offer waiting for faces: %d seen, going on", len(self.samples))
            self.receive(command)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every offer and rollback received so far was handled (tests, benches)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(5)

    def _loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            kind, command = item
            try:
                if kind == "offer":
                    self.offer(command)
                else:
                    self.rollback(reason=command.reason or "rollback_command")
            except Exception:
                logger.exception("model %s command %s failed", kind, command.command_id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    # -- steps ------------------------------------------------------------------------------

    def _report(self, version: str | None, state: ModelUpdateState, reason: str | None = None) -> None:
        self.status = UpdateStatus(version, state, reason)
        log = logger.warning if state in (ModelUpdateState.FAILED, ModelUpdateState.ROLLED_BACK) else logger.info
        log("model update %s: %s%s", version or "-", state, f" ({reason})" if reason else "")
        try:
            self.on_progress()
        except Exception:
            logger.exception("could not report model update progress")

    def offer(self, command: Command) -> bool:
        """Carry out one offer; True when the device switched to the offered model."""
        started = time.perf_counter()
        with self._waiting_lock:  # this offer supersedes one still waiting for faces
            self._waiting = None
        data: Mapping[str, Any] = command.data
        try:
            manifest = manifest_verify(data.get("manifest"), self.server_public_key)  # type: ignore[arg-type]
        except ManifestError as exc:
            self._report(None, ModelUpdateState.FAILED, exc.code)
            return False
        version = manifest.model_version
        if not agent_version_allowed(manifest.agent_versions, self.agent_version):  # before downloading anything
            self._report(version, ModelUpdateState.FAILED, "incompatible_agent")
            return False
        running = self.current()
        if running is not None and running.model_version == version:
            self._report(version, ModelUpdateState.SWITCHED)  # already there (an offer sent again)
            return True
        self.timings = {}
        try:
            folder = self._download(manifest, data.get("manifest"), str(data.get("url") or ""))
            self.timings["download_s"] = round(time.perf_counter() - started, 3)
            t = time.perf_counter()
            self._verify(data.get("manifest"), folder)
            self.timings["verify_s"] = round(time.perf_counter() - t, 3)
            if len(self.samples) < self.min_samples:  # nothing to self-test on yet: wait, not fail
                with self._waiting_lock:
                    self._waiting = command
                logger.warning("model %s verified; its self-test waits for %d faces (%d seen)", version,
                               self.min_samples, len(self.samples))  # fmt: skip
                self._report(version, ModelUpdateState.VERIFIED, "waiting_for_faces")
                return False
            t = time.perf_counter()
            embedder = bundle_embedder_load(manifest, folder, threads=self.threads)
            self.timings["load_s"] = round(time.perf_counter() - t, 3)
            samples = self.samples.snapshot()
            known = self.samples.vectors(running.model_version) if running is not None else None
            test = self_test(
                embedder, samples, dim=manifest.dim, min_samples=self.min_samples, reference=running,
                reference_vectors=known if known is not None and len(known) == len(samples) else None,
            )  # fmt: skip
            self.last_self_test = test
            self.timings["self_test_s"] = test.seconds
            if not test.ok:
                raise UpdateFailed(
                    test.reason,
                    f"self-test failed on {test.samples} faces: same {test.same}, different {test.different}, "
                    f"rank-1 {test.rank1}",
                )
        except Exception as exc:
            failed_at = time.perf_counter()
            if not isinstance(exc, UpdateFailed):  # a bug or the disk: still the old model, still reported
                logger.exception("model %s: update failed unexpectedly", version)
                exc = UpdateFailed("update_error", str(exc))
            logger.warning("model %s refused: %s (%s); keeping %s", version, exc.code, exc.message,
                           running.model_version if running is not None else "-")  # fmt: skip
            # nothing was switched: the running model decides on; reporting it is the whole "rollback"
            self._report(version, ModelUpdateState.FAILED, exc.code)
            self.timings["rollback_ms"] = round((time.perf_counter() - failed_at) * 1000, 2)
            self.timings["failed_after_s"] = round(time.perf_counter() - started, 3)
            return False
        self._report(version, ModelUpdateState.VERIFIED)
        t = time.perf_counter()
        self.previous, self.previous_signed = running, self.chosen_signed
        self.switch(embedder)
        self.timings["switch_ms"] = round((time.perf_counter() - t) * 1000, 3)
        self.chosen_signed = data.get("manifest")
        try:
            self._persist(self.chosen_signed, previous=running, previous_signed=self.previous_signed)
        except OSError:  # switched all the same; a restart goes back to the configured model
            logger.exception("model %s: the choice could not be saved", version)
        self.timings["total_s"] = round(time.perf_counter() - started, 3)
        logger.warning("model switched to %s (%s)", version, self.timings)
        self._report(version, ModelUpdateState.SWITCHED)
        return True

    def rollback(self, *, reason: str = "rollback_command") -> bool:
        """Back to the model before the last switch (kept loaded); False when there is none. When
        that model came from a bundle it becomes the persisted choice (a restart keeps it), else the
        choice is forgotten (a restart starts the configured model)."""
        started = time.perf_counter()
        with self._waiting_lock:
            if self._waiting is not None:
                logger.warning("model rollback (%s): the offer waiting for faces is dropped", reason)
            self._waiting = None
        previous, running = self.previous, self.current()
        if previous is None or running is None:
            logger.warning("model rollback asked (%s): nothing to roll back to", reason)
            self._report(self.status.model_version, ModelUpdateState.ROLLED_BACK, "nothing_to_roll_back")
            return False
        self.switch(previous)
        self.chosen_signed, self.previous, self.previous_signed = self.previous_signed, None, None
        try:
            if self.chosen_signed is not None:
                self._persist(self.chosen_signed, previous=None, previous_signed=None)
            else:
                self._chosen_forget()
        except OSError:  # rolled back all the same; a restart may start the rolled-back model again
            logger.exception("model rollback to %s: the choice could not be saved", previous.model_version)
        self.timings["rollback_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self._report(running.model_version, ModelUpdateState.ROLLED_BACK, reason)
        return True

    def _bundle_dir(self, version: str) -> Path:
        return self.directory / "bundles" / version

    def _download(self, manifest: ModelManifest, signed: Any, url: str) -> Path:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or not url.endswith("/"):
            raise UpdateFailed("bad_url", f"the offer's url {url!r} is not an http(s) folder URL")
        folder = self._bundle_dir(manifest.model_version)
        folder.mkdir(parents=True, exist_ok=True)
        self._report(manifest.model_version, ModelUpdateState.DOWNLOADING)
        for entry in manifest.files:
            dest = folder / entry.name
            if dest.is_file() and dest.stat().st_size == entry.size:
                continue  # already here (an earlier offer); the verification below checks its bytes

            def authorize(path: str) -> str:
                return request_token_sign(device_uid=self.device_uid, path=path, private_key=self.private_key)

            download_file(
                url + entry.name, dest, size=entry.size, authorize=authorize, timeout_s=self.timeout_s,
                context=self.context, stats=self.download_stats,
            )  # fmt: skip
        return folder

    def _verify(self, signed: Any, folder: Path) -> ModelManifest:
        try:
            return bundle_verify(signed, self.server_public_key, folder, agent_version=self.agent_version)
        except ManifestError as exc:
            # a corrupt file is removed: the next offer downloads it again
            if exc.code == "bad_file":
                for path in folder.iterdir():
                    if path.is_file():
                        path.unlink()
            raise UpdateFailed(exc.code, exc.message) from None

    # -- persistence ------------------------------------------------------------------------

    def _persist(self, signed: Any, *, previous: LocalEmbedder | None, previous_signed: Any) -> None:
        """Write ``chosen.json``: the running bundle's signed manifest and, when the previous model
        came from a bundle too, its signed manifest (its files are kept for a rollback); other
        bundles are removed."""
        body = {
            "signed": signed,
            "previous": previous.model_version if previous is not None else None,
            "previous_signed": previous_signed,
        }
        tmp = self.directory / (CHOSEN_FILE + ".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.directory / CHOSEN_FILE)
        keep = {_signed_version(signed)} | ({_signed_version(previous_signed)} if previous_signed else set())
        for old in (self.directory / "bundles").iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def _chosen_forget(self) -> None:
        (self.directory / CHOSEN_FILE).unlink(missing_ok=True)

    def _load_signed(self, signed: Any) -> LocalEmbedder:
        """The bundle of ``signed`` (a signed manifest) from its folder, verified again and loaded."""
        version = _signed_version(signed)
        manifest = self._verify(signed, self._bundle_dir(version))
        return bundle_embedder_load(manifest, self._bundle_dir(version), threads=self.threads)

    def restore(self) -> LocalEmbedder | None:
        """At start: the persisted choice, its bundle verified again and loaded; None when there is
        none, or when it no longer verifies or loads (then reported ``rolled_back``, and forgotten).
        When the model before it came from a bundle, that one is loaded as :attr:`previous` (what a
        rollback returns to); otherwise the caller sets the configured model there."""
        path = self.directory / CHOSEN_FILE
        if not path.is_file():
            return None
        version = None
        try:
            body = json.loads(path.read_text())
            signed = body["signed"]
            version = _signed_version(signed)
            embedder = self._load_signed(signed)
        except (UpdateFailed, OSError, ValueError, KeyError, TypeError) as exc:
            code = exc.code if isinstance(exc, UpdateFailed) else "chosen_unreadable"
            logger.error("the chosen model %s cannot be used (%s): back to the configured one", version, exc)
            self._chosen_forget()
            self.status = UpdateStatus(version, ModelUpdateState.ROLLED_BACK, code)
            return None
        self.chosen_signed = signed
        previous_signed = body.get("previous_signed")
        if previous_signed:
            try:
                self.previous, self.previous_signed = self._load_signed(previous_signed), previous_signed
            except (UpdateFailed, OSError, ValueError, KeyError, TypeError) as exc:
                logger.error("the model before %s cannot be loaded (%s): a rollback goes to the configured one",
                             version, exc)  # fmt: skip
        self.status = UpdateStatus(version, ModelUpdateState.SWITCHED)
        logger.info("model %s restored from %s", version, path)
        return embedder


def _signed_version(signed: Any) -> str:
    """The model version a signed manifest names (read as stored; verified when loaded)."""
    return str(signed["manifest"]["model_version"])
