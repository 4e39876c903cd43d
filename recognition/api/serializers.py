"""DRF serializers of enrolment photos, 1:N identification, the model registry and recognition health."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from recognition.calibration import CalibrationError, threshold_for
from recognition.gallery_migration import gallery_migration_progress
from recognition.models import EnrollmentPhoto, GalleryMigration, ModelVersion, RecognitionHealth


class EnrollmentPhotoSerializer(serializers.ModelSerializer):
    """A photo and its quality verdict (the image itself is not served by the API)."""

    class Meta:
        model = EnrollmentPhoto
        fields = [
            "id",
            "person",
            "status",
            "quality_reason",
            "quality_message",
            "quality",
            "box",
            "duplicate_of",
            "own_similarity",
            "other_similarity",
            "uploaded_at",
        ]
        read_only_fields = fields


class PhotoUploadSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="JPEG or PNG with exactly one face.")


class IdentifyRequestSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="Picture with a face (the largest usable face is used).")
    limit = serializers.IntegerField(min_value=1, max_value=20, default=5, help_text="How many people to rank.")


class IdentifyMatchSerializer(serializers.Serializer):
    person_id = serializers.IntegerField()
    name = serializers.CharField()
    external_id = serializers.CharField(allow_null=True)
    similarity = serializers.FloatField(help_text="Cosine similarity, -1..1 (higher is closer).")
    above_threshold = serializers.BooleanField(
        help_text="Similarity reaches the calibrated threshold of the model (a door may override it)."
    )


class IdentifyResponseSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    threshold = serializers.FloatField(allow_null=True)
    box = serializers.ListField(child=serializers.FloatField(), help_text="Face box x1, y1, x2, y2 (pixels).")
    quality = serializers.DictField()
    matches = IdentifyMatchSerializer(many=True)


class GalleryMigrationSerializer(serializers.Serializer):
    """The background gallery build of a model version (``recognition.gallery_migration``)."""

    model_version = serializers.CharField()
    state = serializers.ChoiceField(choices=GalleryMigration.State.choices)
    activate = serializers.BooleanField(help_text="The version becomes active once its gallery is complete.")
    total = serializers.IntegerField(help_text="Accepted enrolment photos.")
    done = serializers.IntegerField(help_text="Accepted photos with a vector of this version.")
    failed = serializers.IntegerField(help_text="Photos this version could not embed.")
    percent = serializers.FloatField()
    photos_per_s = serializers.FloatField(help_text="Re-embedding speed (rate-limited).")
    eta_s = serializers.FloatField(allow_null=True, help_text="Seconds left at that speed (null: unknown).")
    ready = serializers.BooleanField(help_text="The gallery covers every accepted photo and everyone active.")
    last_error = serializers.CharField(allow_blank=True)


class ModelVersionSerializer(serializers.ModelSerializer):
    """A model version in the registry, with its measured figures and the calibrated threshold."""

    threshold = serializers.SerializerMethodField(help_text="The match threshold in force for this version.")
    signed = serializers.SerializerMethodField()
    gallery = serializers.SerializerMethodField(help_text="Its gallery build (null: none started).")

    class Meta:
        model = ModelVersion
        fields = [
            "id", "model_version", "backend", "options", "state", "state_changed_at", "dim", "input_kind",
            "input_size", "licence", "source", "files", "agent_versions", "lfw_accuracy", "ms_per_face", "figures",
            "threshold", "signed", "signed_with", "registered_at", "gallery",
        ]  # fmt: skip
        read_only_fields = fields

    def get_threshold(self, obj: ModelVersion) -> float | None:
        try:
            return threshold_for(obj.model_version)
        except CalibrationError:
            return None

    def get_signed(self, obj: ModelVersion) -> bool:
        return bool(obj.signature)

    @extend_schema_field(GalleryMigrationSerializer(allow_null=True))
    def get_gallery(self, obj: ModelVersion) -> dict[str, Any] | None:
        migration = getattr(obj, "gallery_migration", None)
        if migration is None:
            return None
        return GalleryMigrationSerializer(asdict(gallery_migration_progress(migration))).data


class ModelPromotionSerializer(serializers.Serializer):
    build_only = serializers.BooleanField(default=False, help_text="Build the gallery without activating.")
    note = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)


class ModelTransitionSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=ModelVersion.State.choices)
    force = serializers.BooleanField(
        default=False,
        help_text="Activate although the gallery is incomplete, or retire although devices still run the version "
        "(never skips verification).",
    )
    note = serializers.CharField(max_length=300, required=False, default="", allow_blank=True)


class ModelVerificationSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    ok = serializers.BooleanField()
    files = serializers.IntegerField(help_text="Files whose size and SHA-256 were checked.")


class RecognitionHealthSerializer(serializers.ModelSerializer):
    """Recognition at one door with one model version: its baseline, the recent window, the verdict."""

    door_name = serializers.CharField(source="door.name", read_only=True)
    signals = serializers.SerializerMethodField(help_text="Why the recent window drifts (empty: it does not).")

    class Meta:
        model = RecognitionHealth
        fields = [
            "id", "door", "door_name", "model_version", "status", "signals", "evaluated_at", "recent_count",
            "recent", "baseline_count", "baseline_from", "baseline_until", "baseline_set_at", "baseline_set_by",
            "baseline",
        ]  # fmt: skip
        read_only_fields = fields

    def get_signals(self, obj: RecognitionHealth) -> list[dict[str, Any]]:
        return list((obj.recent or {}).get("signals", []))


class RebaselineSerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="Default: the start of the recent window.")
