"""Enrolment services: photos in, quality verdicts, identity checks and gallery embeddings out.

``photo_enroll`` / ``photos_enroll`` store each uploaded file in Django's default storage (never in
the database), decode it defensively (not an image, truncated, too many pixels -> ``bad_image``),
detect faces and check quality (exactly one usable face), store the aligned crop (JPEG) and embed
it with the active embedder (the model registry's active version, ``recognition.engine``).

Identity check (:func:`face_identity_check`): every usable new face is compared with the person's
ACCEPTED photos and with the rest of the gallery, at the model's calibrated threshold
(:func:`recognition.calibration.threshold_for`). It is HELD for review, with no embedding, when

* another person matches it at or above the threshold and better than the person's own photos do
  (``matches_other_person``, ``duplicate_of`` = that person); for a person's first photo, any other
  person at or above the threshold; or
* it does not reach the threshold against any of the person's accepted photos (``not_same_person``).

The similarities and the closest photos (the person's own, the other person's) are stored on the
photo so a reviewer sees both faces side by side. Photos uploaded together (a web upload, one
person's folder of a bulk import) are checked one after another, each against the photos accepted
before it; for a person with no accepted photo yet, the face most like the others of the batch is
checked first, so that one wrong picture in a batch cannot become the reference for the right ones.

The ``FaceEmbedding`` table *is* the gallery: a row exists only for an ACCEPTED photo, so the
matcher needs no status filter (and the partial HNSW index stays exact). :func:`photo_accept`
(a reviewer approves a held photo) computes the embedding again from the stored original (same
deterministic pipeline); :func:`photo_reject` deletes the photo's embeddings. Both are recorded in
the access log (reasons ``enrolment_approved`` / ``enrolment_rejected``, the reviewer as actor).
:func:`person_reembed` adds embeddings of another model version for the accepted photos (gallery
migration); versions coexist because every search is restricted to one version.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from faceengine.alignment import align_arcface
from faceengine.detector import detect_faces
from faceengine.pipeline import crop_for
from faceengine.quality import QualityThresholds, assess_image, significant_faces
from recognition.calibration import threshold_for
from recognition.engine import active_embedder
from recognition.gallery import gallery_search
from recognition.gallery_versions import gallery_versions_lock, photo_versions_schedule
from recognition.models import EnrollmentPhoto, FaceEmbedding

if TYPE_CHECKING:
    from accessctl.models import Person
    from faceengine.embedder import Embedder

logger = logging.getLogger(__name__)

#: Largest upload accepted (bytes); larger files are not stored.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
# Most pixels decoded for one picture, checked from its header before decoding:
# settings.RECOGNITION_MAX_DECODE_PIXELS (sized for faces, it admits 12-16 MP phone photos at
# full size and larger camera JPEGs decoded at a reduced scale, see decode_image).
#: A baseline JPEG may declare at most this many pixels (it is decoded at a reduced scale).
MAX_DECLARED_JPEG_PIXELS = 64_000_000
#: Pictures smaller than this (shorter side, px) cannot hold a usable face.
MIN_IMAGE_SIDE = 32
#: Detection runs on a copy whose longer side is at most this (faster on camera-sized photos).
MAX_WORKING_SIDE = 1600
CROP_JPEG_QUALITY = 92


class EnrollmentCode(StrEnum):
    """Codes stored in ``EnrollmentPhoto.quality_reason`` besides the :class:`QualityReason` values."""

    BAD_IMAGE = "bad_image"
    DUPLICATE = "duplicate"  # before the identity check: now held as MATCHES_OTHER_PERSON
    REVIEWER_REJECTED = "reviewer_rejected"
    # held for review by the identity check
    MATCHES_OTHER_PERSON = "matches_other_person"
    NOT_SAME_PERSON = "not_same_person"


HOLD_MESSAGES = {
    EnrollmentCode.MATCHES_OTHER_PERSON: "This face matches another enrolled person better; review it before use.",
    EnrollmentCode.NOT_SAME_PERSON: "This face does not match the person's accepted photos; review it before use.",
}


class EnrollmentError(Exception):
    """A review action that is not possible in the photo's state."""


class BadImageError(ValueError):
    """The upload is not a decodable picture of acceptable size."""


@dataclass(frozen=True)
class FaceAnalysis:
    """What the pipeline found in one enrolment picture."""

    ok: bool
    reason: str = ""
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    box: list[float] = field(default_factory=list)
    crop_jpeg: bytes | None = None
    embedding: np.ndarray | None = None
    model_version: str = ""
    quality_score: float = 0.0


# --------------------------------------------------------------------------- helpers


def configured_embedder() -> Embedder:
    """The registry's active model version's embedder (loaded once per process)."""
    return active_embedder()


def _quality_thresholds() -> QualityThresholds:
    return QualityThresholds(min_face_size=float(settings.RECOGNITION_MIN_FACE_PX))


def _read_upload(image: bytes | IO[bytes]) -> bytes:
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if hasattr(image, "seek"):
        try:
            image.seek(0)
        except (OSError, ValueError):
            pass
    data = image.read(MAX_UPLOAD_BYTES + 1)
    if isinstance(data, str):
        raise BadImageError("expected binary image data, got text")
    return bytes(data)


class DecodeSlots:
    """At most ``settings.RECOGNITION_DECODE_CONCURRENCY`` pictures decoded at once in this process.

    Views run in threads (daphne/ASGI runs sync views off the event loop), so several uploads could
    otherwise decode side by side, each holding up to ~100 MB at the pixel cap. A thread waits here
    for a slot; ``waiting`` says how many do (logged, and observable in tests).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._semaphore: threading.BoundedSemaphore | None = None
        self.waiting = 0

    @property
    def size(self) -> int:
        return max(1, int(settings.RECOGNITION_DECODE_CONCURRENCY))

    def _slots(self) -> threading.BoundedSemaphore:
        with self._lock:
            if self._semaphore is None:
                self._semaphore = threading.BoundedSemaphore(self.size)
            return self._semaphore

    @contextmanager
    def held(self) -> Iterator[None]:
        slots = self._slots()
        if not slots.acquire(blocking=False):
            with self._lock:
                self.waiting += 1
            logger.info("picture decode waits for a free slot")
            try:
                slots.acquire()
            finally:
                with self._lock:
                    self.waiting -= 1
        try:
            yield
        finally:
            slots.release()


DECODE_SLOTS = DecodeSlots()


def _max_decode_pixels() -> int:
    return int(settings.RECOGNITION_MAX_DECODE_PIXELS)


def _decode_size(img: Any) -> tuple[int, int]:
    """The size Pillow will decode ``img`` at: a large baseline JPEG is decoded at a reduced scale
    (1/2..1/8, libjpeg's DCT scaling) that still covers ``MAX_WORKING_SIDE``. Progressive JPEGs keep
    every coefficient of the full picture in memory whatever the scale, so they count in full."""
    progressive = img.info.get("progressive") or img.info.get("progression")
    width, height = img.size
    if img.format == "JPEG" and not progressive and width * height <= MAX_DECLARED_JPEG_PIXELS:
        longer = max(width, height)
        if longer > MAX_WORKING_SIDE:  # the smallest scale whose longer side still covers the working side
            img.draft("RGB", (max(1, width * MAX_WORKING_SIDE // longer), max(1, height * MAX_WORKING_SIDE // longer)))
    return img.size


def decode_image(data: bytes) -> np.ndarray:
    """RGB uint8 array of an uploaded picture (EXIF orientation applied, longer side at most
    ``MAX_WORKING_SIDE``).

    The picture's size is read from its header first: one that would decode to more than
    ``settings.RECOGNITION_MAX_DECODE_PIXELS`` is refused before any pixel is decoded (a 35 KB PNG
    can declare 6000x6000, ~400 MB and seconds of CPU to decode). At most
    ``settings.RECOGNITION_DECODE_CONCURRENCY`` decodes run at once (:data:`DECODE_SLOTS`).
    Raises :class:`BadImageError` for anything that is not a complete picture of sane size.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadImageError("The file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImageError(f"The file is too large (over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB).")
    limit = _max_decode_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                width, height = img.size
                decoded_width, decoded_height = _decode_size(img)
                if decoded_width * decoded_height > limit:
                    raise BadImageError(
                        f"The picture is too large to process ({width}x{height} pixels; at most "
                        f"{limit / 1_000_000:g} megapixels): a photo of a face needs far fewer."
                    )
                with DECODE_SLOTS.held():
                    img.load()
                    rgb = img.convert("RGB")
                    del img  # the decoded original; only the RGB copy is kept
                    if max(rgb.size) > MAX_WORKING_SIDE:
                        rgb.thumbnail((MAX_WORKING_SIDE, MAX_WORKING_SIDE))
                    rgb = ImageOps.exif_transpose(rgb)
    except BadImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError("The file is not a picture this system can read (JPEG, PNG, WebP, ...).") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError("The picture is damaged or truncated.") from exc
    if min(rgb.size) < MIN_IMAGE_SIDE:
        raise BadImageError(f"The picture is too small ({rgb.size[0]}x{rgb.size[1]}).")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=CROP_JPEG_QUALITY)
    return buffer.getvalue()


def _quality_score(metrics: dict[str, float], thresholds: QualityThresholds) -> float:
    """A 0..1 heuristic to rank a person's photos: detector score x size x sharpness x frontality."""
    size = min(1.0, metrics.get("face_size", 0.0) / max(2.0 * thresholds.min_face_size, 1.0))
    sharp = min(1.0, metrics.get("blur", 0.0) / max(4.0 * thresholds.min_blur, 1.0))
    yaw = max(0.0, 1.0 - abs(metrics.get("yaw", 0.0)) / (2.0 * thresholds.max_yaw))
    return float(round(metrics.get("score", 0.0) * size * sharp * yaw, 4))


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (round(float(v), 4) if isinstance(v, int | float | np.floating | np.integer) else v)
        for k, v in metrics.items()
    }


def face_analyse(data: bytes, *, embedder: Embedder) -> FaceAnalysis:
    """Decode, detect, check quality, crop and embed the one face of an enrolment picture."""

    try:
        rgb = decode_image(data)
    except BadImageError as exc:
        return FaceAnalysis(ok=False, reason=EnrollmentCode.BAD_IMAGE, message=str(exc))
    thresholds = _quality_thresholds()
    height, width = rgb.shape[:2]
    try:
        faces = detect_faces(rgb, num_threads=settings.RECOGNITION_TORCH_THREADS)
    except (RuntimeError, ValueError) as exc:
        logger.warning("face detection failed on a %dx%d picture: %s", width, height, exc)
        return FaceAnalysis(ok=False, reason=EnrollmentCode.BAD_IMAGE, message="The picture could not be processed.")
    verdict = assess_image(rgb, faces, thresholds=thresholds)
    metrics = _plain({**verdict.metrics, "width": width, "height": height})
    significant = significant_faces(faces, area_ratio=thresholds.multiple_face_area_ratio)
    box = [round(float(v), 1) for v in significant[0].box] if significant else []
    if not verdict.ok:
        return FaceAnalysis(
            ok=False, reason=str(verdict.reason), message=verdict.message[:200], metrics=metrics, box=box
        )
    face = significant[0]
    aligned = align_arcface(rgb, face.landmarks)
    crop = crop_for(rgb, face, embedder.input_kind)
    vector = embedder.embed(crop[None])[0]
    return FaceAnalysis(
        ok=True,
        metrics=metrics,
        box=box,
        crop_jpeg=_jpeg(aligned),
        embedding=vector,
        model_version=embedder.model_version,
        quality_score=_quality_score(verdict.metrics, thresholds),
    )


@dataclass(frozen=True)
class IdentityCheck:
    """How a new face compares with its person's accepted photos and with everyone else.

    ``own_*``: the person's closest accepted photo (None when the person has none of this model
    version); ``other_*``: the closest other person of the gallery (None when there is nobody else).
    """

    threshold: float
    own_similarity: float | None = None
    own_photo_id: int | None = None
    other_person_id: int | None = None
    other_similarity: float | None = None
    other_photo_id: int | None = None

    @property
    def hold_reason(self) -> str:
        """``matches_other_person``, ``not_same_person`` or "" (the face may join the gallery)."""
        other, own = self.other_similarity, self.own_similarity
        if other is not None and other >= self.threshold and (own is None or other > own):
            return EnrollmentCode.MATCHES_OTHER_PERSON
        if own is not None and own < self.threshold:
            return EnrollmentCode.NOT_SAME_PERSON
        return ""


def _cosine(vectors: np.ndarray, probe: np.ndarray) -> np.ndarray:
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors @ (probe / max(float(np.linalg.norm(probe)), 1e-12))


def face_identity_check(*, embedding: np.ndarray, model_version: str, person_id: int) -> IdentityCheck:
    """Compare a new face of ``person_id`` with that person's accepted photos (exactly) and with the
    rest of the gallery (the matcher's search), at the model's calibrated threshold.

    Reads only; :attr:`IdentityCheck.hold_reason` says whether the face must be held for review.
    """
    threshold = threshold_for(model_version)
    probe = np.asarray(embedding, dtype=np.float32).reshape(-1)
    own = list(
        FaceEmbedding.objects.filter(person_id=person_id, model_version=model_version).values_list(
            "photo_id", "embedding"
        )
    )
    own_similarity = own_photo_id = None
    if own:
        scores = _cosine(np.asarray([np.asarray(e, dtype=np.float32) for _, e in own]), probe)
        best = int(np.argmax(scores))
        own_similarity, own_photo_id = round(float(scores[best]), 4), own[best][0]
    other = next(
        (c for c in gallery_search(probe, model_version=model_version, limit_people=3) if c.person_id != person_id),
        None,
    )
    if other is None:
        return IdentityCheck(threshold=threshold, own_similarity=own_similarity, own_photo_id=own_photo_id)
    other_photo_id = FaceEmbedding.objects.filter(pk=other.embedding_id).values_list("photo_id", flat=True).first()
    return IdentityCheck(
        threshold=threshold,
        own_similarity=own_similarity,
        own_photo_id=own_photo_id,
        other_person_id=other.person_id,
        other_similarity=round(float(other.similarity), 4),
        other_photo_id=other_photo_id,
    )


def _extension(data: bytes, filename: str | None) -> str:
    signatures = {b"\xff\xd8\xff": ".jpg", b"\x89PNG": ".png", b"GIF8": ".gif", b"BM": ".bmp"}
    for magic, ext in signatures.items():
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    suffix = PurePath(filename or "").suffix.lower()
    return suffix if suffix in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} else ".bin"


def _review_note(photo: EnrollmentPhoto, *, action: str, by: Any, reason: str = "") -> None:
    review = {"action": action, "by": getattr(by, "pk", None), "at": timezone.now().isoformat()}
    if reason:
        review["reason"] = reason[:200]
    photo.quality = {**(photo.quality or {}), "review": review}


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class PhotoUpload:
    """One picture to enrol: its bytes (or a file object) and, when known, its file name."""

    image: bytes | IO[bytes]
    filename: str | None = None


@dataclass
class _Staged:
    photo: EnrollmentPhoto
    analysis: FaceAnalysis


def _photo_stage(*, person: Person, upload: PhotoUpload, uploaded_by: Any, embedder: Callable[[], Embedder]) -> _Staged:
    """Store the original and the crop of one upload and analyse it; the photo is not saved yet."""
    try:
        data = _read_upload(upload.image)
    except BadImageError as exc:
        data, early = b"", str(exc)
    else:
        early = ""
    filename = upload.filename if upload.filename is not None else getattr(upload.image, "name", None)
    photo = EnrollmentPhoto(person=person, uploaded_by=uploaded_by)
    staged = _Staged(photo=photo, analysis=FaceAnalysis(ok=False, reason=EnrollmentCode.BAD_IMAGE, message=early))
    if data and len(data) <= MAX_UPLOAD_BYTES:
        photo.image.save(f"{uuid.uuid4().hex}{_extension(data, filename)}", ContentFile(data), save=False)
    if not early:
        staged.analysis = face_analyse(data, embedder=embedder())
    photo.quality = dict(staged.analysis.metrics)
    photo.box = staged.analysis.box
    if staged.analysis.crop_jpeg is not None:
        photo.crop.save(f"{uuid.uuid4().hex}.jpg", ContentFile(staged.analysis.crop_jpeg), save=False)
    return staged


def _check_order(staged: Sequence[_Staged], *, person: Person) -> list[int]:
    """The order in which to decide ``staged``: as uploaded, except that for a person with no
    accepted photo yet the usable face most like the others of the batch goes first (the first
    accepted face becomes the reference of the next ones)."""
    order = list(range(len(staged)))
    usable = [i for i in order if staged[i].analysis.ok and staged[i].analysis.embedding is not None]
    if len(usable) < 3:
        return order
    versions = {staged[i].analysis.model_version for i in usable}
    if len(versions) != 1 or FaceEmbedding.objects.filter(person=person, model_version=versions.pop()).exists():
        return order
    vectors = np.asarray([staged[i].analysis.embedding for i in usable], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, np.nan)
    seed = usable[int(np.nanargmax(np.nanmedian(similarity, axis=1)))]
    return [seed, *(i for i in order if i != seed)]


def _photo_decide(staged: _Staged, *, person: Person) -> FaceEmbedding | None:
    """Save the photo: REJECTED (quality), HELD (identity check) or ACCEPTED with its embedding."""
    photo, analysis = staged.photo, staged.analysis
    with transaction.atomic():
        if not analysis.ok or analysis.embedding is None:
            photo.status = EnrollmentPhoto.Status.REJECTED
            photo.quality_reason = analysis.reason
            photo.quality_message = analysis.message
            photo.save()
            return None
        # One decision at a time per person: a concurrent upload sees the photos accepted before it.
        list(type(person).objects.select_for_update().filter(pk=person.pk).values_list("pk", flat=True))
        photo.quality["quality_score"] = analysis.quality_score
        check = face_identity_check(
            embedding=analysis.embedding, model_version=analysis.model_version, person_id=person.pk
        )
        photo.own_similarity, photo.own_photo_id = check.own_similarity, check.own_photo_id
        photo.other_similarity, photo.other_photo_id = check.other_similarity, check.other_photo_id
        photo.quality["identity_check"] = {
            "threshold": round(check.threshold, 4),
            "model_version": analysis.model_version,
            "other_person": check.other_person_id,
        }
        reason = check.hold_reason
        if reason:
            photo.status = EnrollmentPhoto.Status.HELD
            photo.quality_reason = reason
            photo.quality_message = HOLD_MESSAGES[EnrollmentCode(reason)]
            if reason == EnrollmentCode.MATCHES_OTHER_PERSON:
                photo.duplicate_of_id = check.other_person_id
            photo.save()
            return None
        photo.status = EnrollmentPhoto.Status.ACCEPTED
        photo.save()
        return _accepted_embedding_store(photo=photo, analysis=analysis)


def photos_enroll(
    *,
    person: Person,
    uploads: Sequence[PhotoUpload],
    uploaded_by: Any = None,
    embedder: Embedder | None = None,
    progress: Callable[[int, EnrollmentPhoto], None] | None = None,
) -> list[EnrollmentPhoto]:
    """Store, assess and check photos of ``person`` uploaded together; the saved photos, in the
    order of ``uploads``. ``progress(index, photo)`` is called as each photo is decided.

    ACCEPTED: one usable face that passed the identity check, embedded into the gallery.
    REJECTED: ``quality_reason`` is a :class:`~faceengine.quality.QualityReason` value or
    ``bad_image``, ``quality_message`` says why in words. HELD: the face failed the identity check
    (module docstring); not in the gallery until :func:`photo_accept`.
    """
    loaded: list[Embedder] = [embedder] if embedder is not None else []

    def active() -> Embedder:
        if not loaded:
            loaded.append(configured_embedder())
        return loaded[0]

    staged: list[_Staged] = []
    try:
        for upload in uploads:
            staged.append(_photo_stage(person=person, upload=upload, uploaded_by=uploaded_by, embedder=active))
        for index in _check_order(staged, person=person):
            item = staged[index]
            embedding = _photo_decide(item, person=person)
            photo = item.photo
            logger.info(
                "enrolment photo %s of person %s: %s%s%s (own %s, other %s)",
                photo.pk, person.pk, photo.status,
                f" ({photo.quality_reason})" if photo.quality_reason else "",
                f", matches person {photo.duplicate_of_id}" if photo.duplicate_of_id else "",
                photo.own_similarity, photo.other_similarity,
            )  # fmt: skip
            if embedding is not None:
                logger.debug("embedding %s (%s) created for photo %s", embedding.pk, embedding.model_version, photo.pk)
            if progress is not None:
                progress(index, photo)
    except Exception:
        # The files are not transactional: remove what we wrote for photos that were not saved.
        for item in staged:
            if item.photo.pk is None:
                for f in (item.photo.image, item.photo.crop):
                    if f:
                        f.storage.delete(f.name)
        raise
    return [item.photo for item in staged]


def photo_enroll(
    *,
    person: Person,
    image: bytes | IO[bytes],
    uploaded_by: Any = None,
    filename: str | None = None,
    embedder: Embedder | None = None,
) -> EnrollmentPhoto:
    """Store, assess and check one enrolment photo of ``person`` (:func:`photos_enroll`)."""
    (photo,) = photos_enroll(
        person=person, uploads=[PhotoUpload(image=image, filename=filename)], uploaded_by=uploaded_by, embedder=embedder
    )
    return photo


def _review_audit(photo: EnrollmentPhoto, *, approved: bool, by: Any, held_reason: str, reason: str = "") -> None:
    """One access-log record of a reviewer's decision on an enrolment photo (same transaction)."""
    from accessctl.audit import event_record
    from accessctl.codes import Decision, Reason
    from accessctl.models import AccessEvent

    details: dict[str, Any] = {
        "action": "enrolment_photo_approved" if approved else "enrolment_photo_rejected",
        "photo": photo.pk,
        "was": held_reason or photo.status,
        "own_similarity": photo.own_similarity,
        "other_similarity": photo.other_similarity,
        "other_person": photo.duplicate_of_id,
    }
    if reason:
        details["reason"] = reason[:200]
    event_record(
        detection_id=None,
        occurred_at=timezone.now(),
        decision=Decision.GRANT if approved else Decision.DENY,
        reason=Reason.ENROLMENT_APPROVED if approved else Reason.ENROLMENT_REJECTED,
        source=AccessEvent.Source.OPERATOR,
        person_id=photo.person_id,
        actor_id=getattr(by, "pk", None),
        details=details,
    )


def _embed_stored_photo(photo: EnrollmentPhoto, embedder: Embedder) -> FaceAnalysis:
    if not photo.image:
        raise EnrollmentError(f"photo {photo.pk} has no stored image")
    with photo.image.open("rb") as fh:
        data = fh.read()
    return face_analyse(data, embedder=embedder)


def photo_version_analyse(photo: EnrollmentPhoto, embedder: Embedder) -> FaceAnalysis:
    """The stored original of ``photo`` through the enrolment pipeline, embedded with ``embedder``
    (another model version: gallery migration). A photo whose file is gone or unreadable gives an
    analysis that is not ``ok`` (logged), never an exception."""
    try:
        return _embed_stored_photo(photo, embedder)
    except (EnrollmentError, OSError) as exc:
        logger.warning("photo %s cannot be embedded with %s: %s", photo.pk, embedder.model_version, exc)
        return FaceAnalysis(ok=False, reason=EnrollmentCode.BAD_IMAGE)


def photo_embedding_store(*, photo: EnrollmentPhoto, analysis: FaceAnalysis) -> FaceEmbedding:
    """Store ``analysis``'s vector as the photo's embedding of its model version (replacing one of
    that version). The caller holds the transaction and has checked the photo is accepted."""
    if analysis.embedding is None:
        raise EnrollmentError(f"photo {photo.pk}: no embedding to store")
    FaceEmbedding.objects.filter(photo_id=photo.pk, model_version=analysis.model_version).delete()
    return FaceEmbedding.objects.create(
        person_id=photo.person_id,
        photo=photo,
        model_version=analysis.model_version,
        embedding=analysis.embedding.tolist(),
        quality=analysis.quality_score,
    )


def _accepted_embedding_store(*, photo: EnrollmentPhoto, analysis: FaceAnalysis) -> FaceEmbedding:
    """The embedding of a photo the enrolment just accepted, and the other kept model versions'
    embeddings scheduled for after the commit (``recognition.gallery_versions``: a promotion in
    progress misses no photo accepted meanwhile)."""
    gallery_versions_lock()
    embedding = photo_embedding_store(photo=photo, analysis=analysis)
    photo_versions_schedule(photo.pk, have=analysis.model_version)
    return embedding


def photo_accept(*, photo: EnrollmentPhoto, by: Any = None, embedder: Embedder | None = None) -> EnrollmentPhoto:
    """Approve a HELD (or PENDING) photo into the gallery: a reviewer's decision, audited.

    A photo rejected for quality cannot be accepted (it has no usable face). Accepting an already
    accepted photo changes nothing.
    """
    if photo.status == EnrollmentPhoto.Status.ACCEPTED:
        return photo
    if photo.status == EnrollmentPhoto.Status.REJECTED and photo.quality_reason not in (
        EnrollmentCode.DUPLICATE,
        EnrollmentCode.MATCHES_OTHER_PERSON,
        EnrollmentCode.NOT_SAME_PERSON,
        EnrollmentCode.REVIEWER_REJECTED,
        "",
    ):
        raise EnrollmentError(f"photo {photo.pk} was rejected for quality ({photo.quality_reason}); upload another")
    emb = embedder or configured_embedder()
    analysis = _embed_stored_photo(photo, emb)
    if not analysis.ok or analysis.embedding is None:
        raise EnrollmentError(f"photo {photo.pk} has no usable face ({analysis.reason})")
    with transaction.atomic():
        locked = EnrollmentPhoto.objects.select_for_update().get(pk=photo.pk)
        if locked.status != EnrollmentPhoto.Status.ACCEPTED:
            held_reason = locked.quality_reason
            locked.status = EnrollmentPhoto.Status.ACCEPTED
            locked.quality_reason = ""
            locked.quality_message = ""
            _review_note(locked, action="accepted", by=by)
            locked.save()
            _accepted_embedding_store(photo=locked, analysis=analysis)
            _review_audit(locked, approved=True, by=by, held_reason=held_reason)
    logger.info("enrolment photo %s accepted by user %s", photo.pk, getattr(by, "pk", None))
    photo.refresh_from_db()
    return photo


def photo_reject(*, photo: EnrollmentPhoto, by: Any = None, reason: str = "") -> EnrollmentPhoto:
    """Reject a photo (held, pending or accepted) and remove its embeddings from the gallery; audited."""
    with transaction.atomic():
        locked = EnrollmentPhoto.objects.select_for_update().get(pk=photo.pk)
        was = locked.quality_reason if locked.status == EnrollmentPhoto.Status.HELD else locked.status
        deleted, _ = FaceEmbedding.objects.filter(photo=locked).delete()
        if locked.status != EnrollmentPhoto.Status.REJECTED or not locked.quality_reason:
            locked.quality_reason = EnrollmentCode.REVIEWER_REJECTED
        if locked.status != EnrollmentPhoto.Status.REJECTED or reason:
            locked.quality_message = (reason or "Rejected by a reviewer.")[:200]
        locked.status = EnrollmentPhoto.Status.REJECTED
        _review_note(locked, action="rejected", by=by, reason=reason)
        locked.save()
        _review_audit(locked, approved=False, by=by, held_reason=was, reason=reason)
    logger.info(
        "enrolment photo %s rejected by user %s (%d embeddings removed)", photo.pk, getattr(by, "pk", None), deleted
    )
    photo.refresh_from_db()
    return photo


@dataclass
class ReembedSummary:
    model_version: str
    photos: int = 0
    created: int = 0
    skipped: int = 0
    failed: int = 0
    failed_photo_ids: list[int] = field(default_factory=list)


def person_reembed(
    *,
    embedder: Embedder | str | None = None,
    person: Person | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReembedSummary:
    """Embed the accepted photos (of ``person``, or everyone) with another model (gallery migration).

    ``embedder`` is an :class:`~faceengine.embedder.Embedder` or a backend name (default: the
    configured one). Photos that already have an embedding of that model version are skipped
    unless ``force``. Embeddings of other versions are left alone (searches never mix versions);
    delete them with :func:`embeddings_prune` once the new version is the configured one.
    ``progress(done, total)`` is called after each photo.
    """
    from faceengine.embedder import Embedder as EmbedderBase
    from recognition.engine import active_embedder

    emb = (
        embedder
        if isinstance(embedder, EmbedderBase)
        else (active_embedder(embedder) if embedder else configured_embedder())
    )
    photos = EnrollmentPhoto.objects.filter(status=EnrollmentPhoto.Status.ACCEPTED).order_by("id")
    if person is not None:
        photos = photos.filter(person=person)
    ids = list(photos.values_list("id", flat=True))
    summary = ReembedSummary(model_version=emb.model_version, photos=len(ids))
    for done, photo_id in enumerate(ids, start=1):
        photo = EnrollmentPhoto.objects.filter(pk=photo_id, status=EnrollmentPhoto.Status.ACCEPTED).first()
        existing = FaceEmbedding.objects.filter(photo_id=photo_id, model_version=emb.model_version)
        if photo is None or (existing.exists() and not force):
            summary.skipped += 1
        else:
            analysis = photo_version_analyse(photo, emb)
            if not analysis.ok or analysis.embedding is None:
                summary.failed += 1
                summary.failed_photo_ids.append(photo_id)
            else:
                with transaction.atomic():
                    photo_embedding_store(photo=photo, analysis=analysis)
                summary.created += 1
        if progress is not None:
            progress(done, len(ids))
    logger.info(
        "re-embedded gallery with %s: %d photos, %d created, %d skipped, %d failed",
        emb.model_version,
        summary.photos,
        summary.created,
        summary.skipped,
        summary.failed,
    )
    return summary


def embeddings_prune(*, keep_model_version: str) -> int:
    """Delete every gallery embedding of another model version; returns how many."""
    deleted, _ = FaceEmbedding.objects.exclude(model_version=keep_model_version).delete()
    logger.info("pruned %d embeddings not of %s", deleted, keep_model_version)
    return deleted
