"""Enrolment photos, face embeddings (pgvector gallery) and per-model calibration."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

# Dimensions of the embedders we ship. The embedding column is an untyped ``vector`` so several
# models can coexist; each model version gets its own partial HNSW index on a typed cast.
# Adding a model version here needs a migration that creates its index (see 0003).
EMBEDDING_DIMS = {
    "sface-2021dec-int8bq": 128,
    "sface-2021dec-int8bq-flip": 128,
    "sface-2021dec-int8qdq": 128,
    "facenet-casia-20180408": 512,
    "facenet-casia-20180408-fixed-flip": 512,
    "facenet-vggface2": 512,
}


class EnrollmentPhoto(models.Model):
    """A photo uploaded to enrol a person, with the detector's quality verdict."""

    class Status(models.TextChoices):
        PENDING = "pending"
        ACCEPTED = "accepted"
        REJECTED = "rejected"
        HELD = "held", "Held for review"

    person = models.ForeignKey("accessctl.Person", on_delete=models.CASCADE, related_name="photos")
    image = models.FileField(upload_to="enrollment/%Y/%m/", max_length=300)
    crop = models.FileField(upload_to="enrollment-crops/%Y/%m/", max_length=300, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    quality_reason = models.CharField(max_length=32, blank=True, help_text="Quality code when not usable.")
    quality_message = models.CharField(max_length=200, blank=True)
    quality = models.JSONField(default=dict, blank=True, help_text="Measured face size, sharpness, pose, score.")
    box = models.JSONField(default=list, blank=True)
    duplicate_of = models.ForeignKey(
        "accessctl.Person",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Another person this face already matches (flagged for review).",
    )
    # Identity check of a new face (recognition.enrollment.face_identity_check), kept for review.
    own_similarity = models.FloatField(
        null=True, blank=True, help_text="Best similarity with the person's accepted photos (none for a first photo)."
    )
    own_photo = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The person's accepted photo closest to this face.",
    )  # fmt: skip
    other_similarity = models.FloatField(
        null=True, blank=True, help_text="Best similarity with anyone else in the gallery."
    )
    other_photo = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The other person's photo closest to this face.",
    )  # fmt: skip
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded_at", "-id"]
        verbose_name = "enrolment photo"

    def __str__(self) -> str:
        return f"photo {self.pk} of {self.person_id} ({self.status})"


class FaceEmbedding(models.Model):
    """One face vector of a person, L2-normalised, tagged with the model that produced it.

    Searches always filter on ``model_version``: vectors of different models are never compared.
    """

    person = models.ForeignKey("accessctl.Person", on_delete=models.CASCADE, related_name="embeddings")
    photo = models.ForeignKey(
        EnrollmentPhoto, null=True, blank=True, on_delete=models.CASCADE, related_name="embeddings"
    )
    model_version = models.CharField(max_length=64, db_index=True)
    embedding = VectorField()
    quality = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["person", "id"]

    def __str__(self) -> str:
        return f"embedding {self.pk} ({self.model_version}) of {self.person_id}"


class ModelCalibration(models.Model):
    """Decision threshold (cosine similarity) chosen for a model at a target false-match rate."""

    model_version = models.CharField(max_length=64, unique=True)
    threshold = models.FloatField()
    target_fmr = models.FloatField()
    min_margin = models.FloatField(default=0.0)
    details = models.JSONField(default=dict, blank=True, help_text="Dataset, pair counts, measured rates.")
    calibrated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_version"]

    def __str__(self) -> str:
        return f"{self.model_version}: {self.threshold:.3f} @ FMR {self.target_fmr:g}"


class InboundDetection(models.Model):
    """A verified detection waiting for its decision (the durable hand-off from bridge to worker).

    The bridge stages it (``recognition.staging``; unique ``detection_id``: a transport duplicate
    is dropped here) and enqueues the recognition task with only the id. The decision deletes it
    in the same transaction that records the AccessEvent, so a row that lingers means a lost or
    failed task; a periodic sweep re-enqueues those. The crop is in storage (``crop``), never in
    the database. The device is named by its uid (and its row id, recorded on the event), not by
    a foreign key: recognition knows doors, not the device registry.
    """

    detection_id = models.UUIDField(unique=True)
    device_uid = models.CharField(max_length=64)
    device_id = models.BigIntegerField(null=True, blank=True, help_text="The device's row id (devices app).")
    door = models.ForeignKey("accessctl.Door", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    payload = models.JSONField(help_text="Verified detection payload without the crop bytes.")
    crop = models.CharField(max_length=300, blank=True, help_text="Storage name of the face crop (crop mode).")
    enqueued = models.PositiveSmallIntegerField(default=1, help_text="How many times the task was enqueued.")

    class Meta:
        ordering = ["received_at", "id"]

    def __str__(self) -> str:
        return str(self.detection_id)


class ModelVersion(models.Model):
    """One face-embedding model version in the registry (``recognition/model_registry.py``).

    ``state``: a ``candidate`` is registered and measured, a ``shadow`` one is being compared with
    the active one, exactly one is ``active`` (the embedder this server decides crop-mode
    detections and enrols photos with: :mod:`recognition.engine` reads it here), a ``retired`` one
    is kept for the record. Transitions go through :func:`recognition.model_registry.model_version_transition`.

    ``manifest`` + ``signature``: the files (SHA-256, size), version, backend options, input and the
    agent versions that may load it, signed with the server's Ed25519 key
    (:mod:`faceengine.protocol.model_manifest`).
    """

    class State(models.TextChoices):
        CANDIDATE = "candidate"
        SHADOW = "shadow"
        ACTIVE = "active"
        RETIRED = "retired"

    model_version = models.CharField(max_length=64, unique=True)
    backend = models.CharField(max_length=32, help_text="faceengine backend name (faceengine.registry).")
    options = models.JSONField(
        default=dict, blank=True, help_text="Backend options that make this version (e.g. flip averaging)."
    )
    dim = models.PositiveIntegerField()
    input_kind = models.CharField(max_length=16)
    input_size = models.PositiveSmallIntegerField()
    licence = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=300, blank=True, help_text="Where the weights come from.")
    files = models.JSONField(default=list, blank=True, help_text="[{name, sha256, size}] of the weight files.")
    agent_versions = models.CharField(
        max_length=100, blank=True, help_text="Edge agent versions that may load it, e.g. '>=0.1.0' (empty: all)."
    )
    lfw_accuracy = models.FloatField(null=True, blank=True, help_text="LFW 10-fold accuracy, percent.")
    ms_per_face = models.FloatField(null=True, blank=True, help_text="Embedding time per face on this server, ms.")
    figures = models.JSONField(default=dict, blank=True, help_text="Other measured figures (TAR@FAR, ...).")
    state = models.CharField(max_length=16, choices=State.choices, default=State.CANDIDATE)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    manifest = models.JSONField(default=dict, blank=True, help_text="The signed manifest (empty: not signed yet).")
    signature = models.CharField(max_length=128, blank=True, help_text="Base64 Ed25519 signature of the manifest.")
    signed_with = models.CharField(max_length=64, blank=True, help_text="Public key (base64) that signed it.")
    registered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_version"]
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state="active"), name="recognition_one_active_model_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_version} ({self.state})"


class ModelStateChange(models.Model):
    """The record of one registry transition: who moved which version from what to what, and why."""

    model = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="state_changes")
    from_state = models.CharField(max_length=16)
    to_state = models.CharField(max_length=16)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="Who, as named when it happened.")
    forced = models.BooleanField(default=False, help_text="A safety check was overridden.")
    note = models.CharField(max_length=300, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.model_id}: {self.from_state} -> {self.to_state}"


class RecognitionHealth(models.Model):
    """How recognition behaves at one door with one model version: the door's own baseline and the
    last evaluation of the recent window against it (``recognition/health.py``)."""

    class Status(models.TextChoices):
        NO_BASELINE = "no_baseline", "collecting a baseline"
        TOO_FEW = "too_few", "too few recent decisions to judge"
        OK = "ok"
        DRIFT = "drift", "drifted from the baseline"

    door = models.ForeignKey("accessctl.Door", on_delete=models.CASCADE, related_name="+")
    model_version = models.CharField(max_length=64)
    baseline = models.JSONField(default=dict, blank=True, help_text="Distributions and rates of the baseline window.")
    baseline_count = models.PositiveIntegerField(default=0)
    baseline_from = models.DateTimeField(null=True, blank=True)
    baseline_until = models.DateTimeField(null=True, blank=True)
    baseline_set_at = models.DateTimeField(null=True, blank=True)
    baseline_set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recent = models.JSONField(default=dict, blank=True, help_text="The recent window and its drift signals.")
    recent_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NO_BASELINE)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["door", "model_version"]
        verbose_name_plural = "recognition health"
        constraints = [models.UniqueConstraint(fields=["door", "model_version"], name="recognition_health_door_model")]

    def __str__(self) -> str:
        return f"door {self.door_id} / {self.model_version}: {self.status}"


class ShadowDecision(models.Model):
    """What a model version in state ``shadow`` would have decided on one live crop-mode detection,
    beside what the active version decided (``recognition/shadow.py``). Never acted on.

    Both decisions are the access policy's verdict on each model's match, taken at the same door and
    moment with the same inputs (so cooldowns and anti-passback, which are not the model's doing, do
    not count as disagreements); ``event_id`` is the real event (no foreign key: the access log is
    purged by its owner's function, and this row must not hold that up).
    """

    class Decision(models.TextChoices):
        GRANT = "grant"
        DENY = "deny"

    model = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="shadow_decisions")
    event_id = models.BigIntegerField(help_text="The real AccessEvent (its id).")
    detection_id = models.UUIDField(null=True, blank=True)
    door = models.ForeignKey("accessctl.Door", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    occurred_at = models.DateTimeField(help_text="When the face was captured (the event's time).")
    active_model_version = models.CharField(max_length=64)
    active_person = models.ForeignKey(
        "accessctl.Person", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    active_decision = models.CharField(max_length=8, choices=Decision.choices)
    active_reason = models.CharField(max_length=32)
    active_similarity = models.FloatField(null=True, blank=True)
    active_margin = models.FloatField(null=True, blank=True)
    shadow_person = models.ForeignKey(
        "accessctl.Person", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    shadow_decision = models.CharField(max_length=8, choices=Decision.choices)
    shadow_reason = models.CharField(max_length=32)
    shadow_similarity = models.FloatField(null=True, blank=True)
    shadow_margin = models.FloatField(null=True, blank=True)
    shadow_threshold = models.FloatField(null=True, blank=True)
    agreed_person = models.BooleanField(help_text="Both matched the same person, or both nobody.")
    agreed_decision = models.BooleanField(help_text="Both granted, or both denied.")
    ms = models.FloatField(help_text="Shadow embedding and search time, ms.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["model", "event_id"], name="recognition_shadow_once")]
        indexes = [models.Index(fields=["model", "occurred_at"], name="recognition_shadow_model_at")]

    def __str__(self) -> str:
        return f"shadow {self.model_id} on event {self.event_id}: {self.shadow_decision}"


class GalleryMigration(models.Model):
    """The background build of one model version's gallery (``recognition/gallery_migration.py``):
    every accepted enrolment photo embedded with that version, resumable (a photo that has a vector
    of the version is done), rate-limited, and optionally the version's activation when complete."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        PAUSED = "paused"
        DONE = "done"
        FAILED = "failed"

    model = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="gallery_migration")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    activate = models.BooleanField(default=True, help_text="Make the version active once its gallery is complete.")
    total = models.PositiveIntegerField(default=0, help_text="Accepted photos to cover (last count).")
    done = models.PositiveIntegerField(default=0, help_text="Accepted photos with a vector of this version.")
    failed = models.PositiveIntegerField(default=0, help_text="Photos this version could not embed.")
    failed_photo_ids = models.JSONField(default=list, blank=True)
    embedded = models.PositiveIntegerField(default=0, help_text="Photos embedded by this migration (this run).")
    photos_per_s = models.FloatField(default=0.0, help_text="Re-embedding speed of the last slice.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress written by a worker.")
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"gallery of {self.model_id}: {self.state} {self.done}/{self.total}"
