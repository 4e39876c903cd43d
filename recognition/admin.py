"""Admin for enrolment photos, embeddings and calibrations."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from recognition.models import EnrollmentPhoto, FaceEmbedding, ModelCalibration


@admin.register(EnrollmentPhoto)
class EnrollmentPhotoAdmin(admin.ModelAdmin):
    list_display = ["id", "person", "status", "quality_reason", "duplicate_of", "uploaded_at"]
    list_filter = ["status", "quality_reason"]
    search_fields = ["person__name"]
    readonly_fields = ["quality_reason", "quality_message", "quality", "box", "crop", "duplicate_of", "uploaded_by"]


@admin.register(FaceEmbedding)
class FaceEmbeddingAdmin(admin.ModelAdmin):
    list_display = ["id", "person", "model_version", "quality", "created_at"]
    list_filter = ["model_version"]
    search_fields = ["person__name"]
    exclude = ["embedding"]  # never shown: biometric data
    readonly_fields = ["person", "photo", "model_version", "quality", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ModelCalibration)
class ModelCalibrationAdmin(admin.ModelAdmin):
    list_display = ["model_version", "threshold", "target_fmr", "min_margin", "calibrated_at"]
    readonly_fields = ["details", "calibrated_at"]
