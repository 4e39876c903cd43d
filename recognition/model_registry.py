"""The model registry: model versions, their signed manifests, and which one is active.

Every embedding model this server may use is a :class:`~recognition.models.ModelVersion` row: its
weight files (SHA-256, size), input spec, licence, measured figures and state (candidate, shadow,
active, retired). Exactly one is active (a partial unique index, and :func:`model_version_transition`
moves the previous one out in the same transaction); :mod:`recognition.engine` builds the
embedder from it, so the registry is the one source of "which model decides".

A manifest (:mod:`faceengine.protocol.model_manifest`) describes the version and its files and is
signed with the server's Ed25519 key (``accessctl.server_key``, the key devices trust for
commands). :func:`model_version_verify` checks the signature, that the manifest still says what
the row says (a database edit without re-signing is refused) and every file's bytes.
Activation verifies first and refuses a bad bundle whatever ``force`` says.

Shadow decisions (a shadow version deciding without acting) are in :mod:`recognition.shadow`;
offering a version to devices is ``devices.model_rollout`` (it asks :func:`model_version_decidable`
first); building a version's gallery and promoting it is :mod:`recognition.gallery_migration`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accessctl.exceptions import Conflict, InvalidInput
from accessctl.process_cache import ProcessCache
from accessctl.server_key import server_public_key_b64, server_signing_key
from faceengine.backends import package_data_path
from faceengine.embedder import INPUT_SIZES, InputKind
from faceengine.protocol.model_manifest import (
    ManifestError,
    ModelFile,
    ModelManifest,
    agent_versions_check,
    bundle_verify,
    manifest_sign,
    model_files_describe,
    signed_manifest_dumps,
)
from faceengine.registry import available_backends, backend_class
from recognition.gallery import gallery_people_count
from recognition.gallery_versions import gallery_gaps, gallery_photo_counts, gallery_ready
from recognition.models import EMBEDDING_DIMS, FaceEmbedding, GalleryMigration, ModelStateChange, ModelVersion

logger = logging.getLogger(__name__)

State = ModelVersion.State

#: Allowed moves (from -> to). Leaving ``active`` happens only by activating another version.
TRANSITIONS: dict[str, frozenset[str]] = {
    State.CANDIDATE: frozenset({State.SHADOW, State.ACTIVE, State.RETIRED}),
    State.SHADOW: frozenset({State.CANDIDATE, State.ACTIVE, State.RETIRED}),
    State.ACTIVE: frozenset(),
    State.RETIRED: frozenset({State.CANDIDATE}),
}


class RegistryError(InvalidInput):
    """A registry request that cannot be carried out (bad transition, unknown backend, ...)."""


class BundleRefused(Conflict):
    """The version's manifest or files do not verify; ``code`` is the manifest check's reason."""


@dataclass(frozen=True)
class ActiveModel:
    """What the engine needs to build the active embedder."""

    model_version: str
    backend: str
    options: Mapping[str, Any]
    signature: str = ""


_active_cache = ProcessCache("recognition-active-model", ttl_s=5.0, cleared_by=(ModelVersion,))


# --------------------------------------------------------------------------- selectors


def _active_load() -> ActiveModel | None:
    row = (
        ModelVersion.objects.filter(state=State.ACTIVE)
        .values("model_version", "backend", "options", "signature")
        .first()
    )
    if row is None:
        return None
    return ActiveModel(row["model_version"], row["backend"], dict(row["options"] or {}), row["signature"])


def active_model() -> ActiveModel:
    """The registry's active model version (kept per process for a few seconds; a change made in this
    process is seen at once). Raises :class:`RegistryError` when none is active."""
    active = _active_cache.get("active", _active_load)
    if active is None:
        # Not kept: a version activated by another process (the first one, after an install or a
        # restore) is seen by the next detection, not a few seconds of refused ones later.
        _active_cache.clear()
        raise RegistryError("No model version is active: activate one (manage.py model_registry activate).")
    return active


#: Options that point a backend at weight files of its own choosing.
PATH_OPTIONS = frozenset({"model_path", "graph_path", "weights_path", "cache_dir"})
_verified: set[tuple[str, str, str, str]] = set()
_verified_lock = threading.Lock()


def active_model_verified() -> ActiveModel:
    """:func:`active_model`, checked before this process first loads it: a signed version must
    verify (signature, the row against its manifest, every file); an unsigned one (registered by the
    first migration, not yet by ``model_registry register``) may only use its backend's built-in
    files. So a database edit of the active row (another backend, options naming another file)
    cannot make the server load weights nobody signed. Raises :class:`BundleRefused`."""
    return _verified_once(active_model())


def model_version_verified(model_version: str) -> ActiveModel:
    """What the engine needs to build registry version ``model_version`` (any state), checked like
    :func:`active_model_verified`. Raises :class:`RegistryError` for an unknown version."""
    row = (
        ModelVersion.objects.filter(model_version=model_version)
        .values("model_version", "backend", "options", "signature")
        .first()
    )
    if row is None:
        raise RegistryError(f"No model version {model_version!r} in the registry.")
    return _verified_once(
        ActiveModel(row["model_version"], row["backend"], dict(row["options"] or {}), row["signature"])
    )


def _verified_once(active: ActiveModel) -> ActiveModel:
    key = (active.model_version, active.backend, json.dumps(dict(active.options), sort_keys=True), active.signature)
    if key in _verified:
        return active
    if active.signature:
        model = ModelVersion.objects.filter(model_version=active.model_version).first()
        if model is None:
            raise RegistryError(f"{active.model_version} left the registry.")
        model_version_verify(model=model)
    elif PATH_OPTIONS & set(active.options):
        raise BundleRefused(
            f"{active.model_version} is unsigned and names its own weight files: register it first.", code="unsigned"
        )
    else:
        logger.warning("model %s is used but unsigned: run manage.py model_registry register", active.model_version)
    with _verified_lock:
        _verified.add(key)
    return active


def active_model_cache_clear() -> None:
    """Forget this process's copy of the active model (a change made by a bare UPDATE, in tests)."""
    _active_cache.clear()


def model_file_paths(model: ModelVersion) -> dict[str, Path]:
    """Where this server keeps each of the version's files: the built-in backends' files where the
    backend finds them, anything else in ``RECOGNITION_MODELS_DIR/bundles/<model_version>/``."""
    bundle = Path(settings.RECOGNITION_MODELS_DIR) / "bundles" / model.model_version
    paths = {f["name"]: bundle / f["name"] for f in model.files or []}
    for path in _builtin_files(model.backend, model.options or {}):
        paths[path.name] = path
    return paths


def _builtin_files(backend: str, options: Mapping[str, Any]) -> list[Path]:
    """The weight files a built-in backend loads (empty when unknown or not installed)."""
    try:
        if backend in ("sface", "sface-int8"):
            cls = backend_class(backend)
            return [Path(options["model_path"]) if options.get("model_path") else cls.default_path()]  # type: ignore[attr-defined]
        if backend == "facenet-casia":
            from faceengine.backends.facenet import CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH

            return [package_data_path(CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH)]
        if backend == "facenet-vggface2" and settings.RECOGNITION_FACENET_VGGFACE2_WEIGHTS:
            return [Path(settings.RECOGNITION_FACENET_VGGFACE2_WEIGHTS)]
    except FileNotFoundError:
        return []
    return []


def model_manifest(model: ModelVersion, *, issued_at: int | None = None) -> ModelManifest:
    """The manifest the row describes (what :func:`model_version_sign` signs)."""
    return ModelManifest(
        model_version=model.model_version,
        backend=model.backend,
        files=tuple(ModelFile(name=f["name"], sha256=f["sha256"], size=int(f["size"])) for f in model.files or []),
        dim=int(model.dim),
        input_kind=str(model.input_kind),
        input_size=int(model.input_size),
        licence=model.licence,
        options=dict(model.options or {}),
        agent_versions=model.agent_versions,
        issued_at=int(time.time()) if issued_at is None else issued_at,
    )


def model_signed_manifest(model: ModelVersion) -> bytes:
    """The signed manifest as a device receives it (``manifest.json`` of the bundle)."""
    if not model.signature:
        raise BundleRefused(f"{model.model_version} is not signed yet.", code="unsigned")
    return signed_manifest_dumps(ModelManifest.from_dict(model.manifest), model.signature)


# --------------------------------------------------------------------------- services


def model_version_sign(*, model: ModelVersion) -> ModelVersion:
    """(Re)build the version's manifest from the row and sign it with the server key."""
    manifest = model_manifest(model)
    model.manifest = manifest.to_dict()
    model.signature = manifest_sign(manifest, server_signing_key())
    model.signed_with = server_public_key_b64()
    model.save(update_fields=["manifest", "signature", "signed_with"])
    logger.info("model %s: manifest signed (%d files)", model.model_version, len(manifest.files))
    return model


def model_version_register(
    *,
    backend: str,
    model_version: str | None = None,
    options: Mapping[str, Any] | None = None,
    files: Sequence[str | Path] | None = None,
    licence: str = "",
    source: str = "",
    agent_versions: str = "",
    lfw_accuracy: float | None = None,
    ms_per_face: float | None = None,
    figures: Mapping[str, Any] | None = None,
    actor: Any = None,
) -> ModelVersion:
    """Register (or refresh) a model version: hash its files, record its spec, sign its manifest.

    ``files``: the weight files (default: where the built-in backend finds them). A version that
    is active or retired is not changed (its files are what devices and the gallery were built
    with): register the new files under a new version name. Returns the signed row.
    """
    if backend not in available_backends():
        raise RegistryError(f"Unknown backend {backend!r}; known: {', '.join(available_backends())}.")
    cls = backend_class(backend)
    options = dict(options or {})
    model_version = model_version or cls.version_for(options)
    try:
        agent_versions_check(agent_versions)
    except ManifestError as exc:
        raise RegistryError(exc.message) from None
    paths = [Path(f) for f in files] if files else _builtin_files(backend, options)
    if not paths:
        raise RegistryError(f"No weight files for {model_version}: pass them (the backend has no default here).")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise RegistryError(f"Not a file: {', '.join(missing)}")
    described = model_files_describe(paths)
    with transaction.atomic():
        model = ModelVersion.objects.select_for_update().filter(model_version=model_version).first()
        if model is not None and model.files and model.state in (State.ACTIVE, State.RETIRED):
            if [f.to_dict() for f in described] != list(model.files):
                raise RegistryError(f"{model_version} is {model.state}: its files cannot change (use a new version).")
        created = model is None
        model = model or ModelVersion(model_version=model_version)
        model.backend = backend
        model.options = options
        model.dim = EMBEDDING_DIMS.get(model_version, cls.dim)
        model.input_kind = str(cls.input_kind)
        model.input_size = INPUT_SIZES[InputKind(cls.input_kind)]
        model.files = [f.to_dict() for f in described]
        model.licence = licence or model.licence
        model.source = source or model.source
        model.agent_versions = agent_versions or model.agent_versions
        model.lfw_accuracy = lfw_accuracy if lfw_accuracy is not None else model.lfw_accuracy
        model.ms_per_face = ms_per_face if ms_per_face is not None else model.ms_per_face
        model.figures = {**(model.figures or {}), **dict(figures or {})}
        model.save()
        if created:
            _state_change_record(model=model, before="", after=model.state, actor=actor, note="registered")
        try:
            model_version_sign(model=model)
        except ManifestError as exc:  # e.g. a file name a device would refuse: nothing is registered
            raise RegistryError(f"{model_version}: {exc.message}", code=exc.code) from None
    logger.info("model %s registered (%s, %d files)", model_version, model.state, len(described))
    return model


def model_version_verify(*, model: ModelVersion) -> ModelManifest:
    """Verify the version as a device would, against the files on this server: the signature by
    the server key, the manifest against the row, and every file's size and SHA-256.

    Raises :class:`BundleRefused` (``code``: the reason) on the first failure.
    """
    try:
        manifest = bundle_verify(
            {"manifest": model.manifest, "sig": model.signature}, server_public_key_b64(), Path("."),
            paths=model_file_paths(model),
        )  # fmt: skip
    except ManifestError as exc:
        logger.warning("model %s refused: %s (%s)", model.model_version, exc.code, exc.message)
        raise BundleRefused(f"{model.model_version}: {exc.message}", code=exc.code) from None
    expected = model_manifest(model, issued_at=manifest.issued_at).to_dict()
    if manifest.to_dict() != expected:
        differs = sorted(k for k in expected if expected[k] != manifest.to_dict()[k])
        logger.warning("model %s refused: row differs from its signed manifest in %s", model.model_version, differs)
        raise BundleRefused(
            f"{model.model_version}: the registry row differs from its signed manifest ({', '.join(differs)}).",
            code="manifest_mismatch",
        )
    return manifest


def model_version_decidable(model_version: str) -> bool:
    """Whether the server can decide a detection embedded with ``model_version``: it is the active
    version, or its gallery is complete (:func:`recognition.gallery_versions.gallery_ready`). A
    device is offered a model only when this holds (``devices.model_rollout``)."""
    try:
        if model_version == active_model().model_version:
            return True
    except RegistryError:
        return False
    return gallery_ready(model_version)


def model_version_transition(
    *, model: ModelVersion, to_state: str, actor: Any = None, force: bool = False, note: str = ""
) -> ModelVersion:
    """Move ``model`` to ``to_state`` along :data:`TRANSITIONS`, recorded as a :class:`ModelStateChange`.

    Activating: the bundle must verify (never overridable), the version must have a gallery index
    (``EMBEDDING_DIMS``), and its gallery must be complete
    (:func:`recognition.gallery_versions.gallery_ready`: every accepted photo embedded, everyone the
    active version covers covered; ``force`` overrides only this: a new gallery not yet re-embedded
    would deny everyone); the previously active version is retired in the same transaction, its
    gallery kept (embedding-mode devices still use it) until :func:`model_version_retire`.

    Retiring is :func:`model_version_retire` (it removes the version's gallery).
    """
    try:
        to_state = State(to_state)
    except ValueError:
        raise RegistryError(f"Unknown state {to_state!r}; one of {', '.join(State.values)}.") from None
    if to_state == State.RETIRED:
        return model_version_retire(model=model, actor=actor, force=force, note=note)
    return _transition(model=model, to_state=to_state, actor=actor, force=force, note=note)


def _transition(*, model: ModelVersion, to_state: State, actor: Any, force: bool, note: str) -> ModelVersion:
    with transaction.atomic():
        # Every row locked in one order: two activations at once cannot both win.
        rows = {m.pk: m for m in ModelVersion.objects.select_for_update().order_by("pk")}
        model = rows[model.pk]
        if to_state == model.state:
            return model
        if to_state not in TRANSITIONS[model.state]:
            hint = " (activate another version instead)" if model.state == State.ACTIVE else ""
            raise RegistryError(f"{model.model_version} cannot go from {model.state} to {to_state}{hint}.")
        changes = [(model, model.state, to_state)]
        if to_state == State.ACTIVE:
            model_version_verify(model=model)
            if model.model_version not in EMBEDDING_DIMS:
                raise RegistryError(f"{model.model_version} has no gallery index (recognition.models.EMBEDDING_DIMS).")
            previous = next((m for m in rows.values() if m.state == State.ACTIVE), None)
            if previous is not None:
                photos, people = gallery_gaps(model.model_version)
                if (photos or people) and not force:
                    have, need = gallery_people_count(model.model_version), gallery_people_count(previous.model_version)
                    raise RegistryError(
                        f"{model.model_version} has gallery vectors for {have} people, {previous.model_version} "
                        f"for {need}; {people} people and {photos} accepted photos are not embedded yet: "
                        "promote it (manage.py model_registry promote) or re-embed the gallery first (or force).",
                        code="gallery_incomplete",
                    )
                changes.insert(0, (previous, previous.state, State.RETIRED))
                # The old version's gallery is kept (and topped up) while the fleet moves.
                total, done = gallery_photo_counts(previous.model_version)
                GalleryMigration.objects.get_or_create(
                    model=previous,
                    defaults={"state": GalleryMigration.State.DONE, "activate": False, "finished_at": timezone.now(),
                              "total": total, "done": done},
                )  # fmt: skip
        now = timezone.now()
        for row, before, after in changes:
            row.state, row.state_changed_at = after, now
            row.save(update_fields=["state", "state_changed_at"])
            forced = force and row is model and after == State.ACTIVE
            _state_change_record(model=row, before=before, after=after, actor=actor, forced=forced, note=note)
    return model


#: Who still runs a model version: ``provider(model_version) -> [device uid, ...]`` (the devices
#: app registers it at start-up: recognition does not import the device registry).
ModelUsers = Callable[[str], list[str]]
_model_users: ModelUsers | None = None


def model_users_register(provider: ModelUsers | None) -> None:
    """Register what tells which devices report a model version in their heartbeats."""
    global _model_users
    _model_users = provider


def model_version_users(model_version: str) -> list[str]:
    """The devices that report ``model_version`` in their heartbeats (none known: empty)."""
    return list(_model_users(model_version)) if _model_users is not None else []


def model_version_retire(
    *, model: ModelVersion, actor: Any = None, force: bool = False, note: str = ""
) -> ModelVersion:
    """Retire ``model`` and remove its gallery: its vectors (in the transaction that records the
    change) and its HNSW index (dropped concurrently after it). Also a version already retired by
    an activation, whose gallery was kept while the fleet moved.

    Never the active version. Refused while devices still report the version in their heartbeats
    (their embedding-mode detections are decided in it) unless ``force`` (recorded as forced).
    """
    from recognition.indexing import hnsw_drop

    with transaction.atomic():
        rows = {m.pk: m for m in ModelVersion.objects.select_for_update().order_by("pk")}
        model = rows[model.pk]
        before = model.state
        if before == State.ACTIVE:
            raise RegistryError(
                f"{model.model_version} cannot go from active to retired (activate another version instead: "
                "promote it).",
                code="active",
            )
        if State.RETIRED not in TRANSITIONS[before] and before != State.RETIRED:
            raise RegistryError(f"{model.model_version} cannot go from {before} to retired.")
        users = model_version_users(model.model_version)
        if users and not force:
            shown = ", ".join(sorted(users)[:10]) + (" ..." if len(users) > 10 else "")
            raise RegistryError(
                f"{len(users)} device(s) still run {model.model_version} ({shown}): roll them to another version "
                "first (or force).",
                code="in_use",
            )
        removed, _ = FaceEmbedding.objects.filter(model_version=model.model_version).delete()
        GalleryMigration.objects.filter(model=model).delete()
        model.state, model.state_changed_at = State.RETIRED, timezone.now()
        model.save(update_fields=["state", "state_changed_at"])
        what = f"gallery removed ({removed} vectors, index dropped)"
        if users:
            what += f"; {len(users)} device(s) still ran it"
        _state_change_record(
            model=model, before=before, after=State.RETIRED, actor=actor, forced=bool(force and users),
            note=f"{note}; {what}" if note else what,
        )  # fmt: skip
    if model.model_version in EMBEDDING_DIMS:
        version = model.model_version
        transaction.on_commit(lambda: hnsw_drop(version))  # concurrently: outside any transaction
    logger.warning("model %s retired: %d vectors removed", model.model_version, removed)
    return model


def model_version_note(*, model: ModelVersion, actor: Any = None, note: str) -> ModelStateChange:
    """Record an act on ``model`` that does not change its state (a gallery build requested, paused)
    in its registry history: a :class:`ModelStateChange` from its state to the same state."""
    return _state_change_record(model=model, before=model.state, after=model.state, actor=actor, note=note)


def _state_change_record(
    *, model: ModelVersion, before: str, after: str, actor: Any, forced: bool = False, note: str = ""
) -> ModelStateChange:
    name = str(getattr(actor, "username", None) or getattr(actor, "label", None) or "system")
    change = ModelStateChange.objects.create(
        model=model, from_state=before, to_state=after, actor=actor if getattr(actor, "pk", None) else None,
        actor_name=name[:150], forced=forced, note=note[:300],
    )  # fmt: skip
    logger.warning(
        "model %s: %s -> %s by %s%s", model.model_version, before or "-", after, name, " (forced)" if forced else ""
    )
    return change
