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
