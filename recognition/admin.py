"""Admin for enrolment photos (with the review of held photos), embeddings and calibrations."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from recognition.enrollment import EnrollmentError, photo_accept, photo_reject
from recognition.models import EnrollmentPhoto, FaceEmbedding, ModelCalibration


def _face(photo: EnrollmentPhoto | None, caption: str, similarity: float | None) -> tuple[str, str, str] | None:
    if photo is None or not photo.crop:
        return None
    score = "" if similarity is None else f" · {similarity:.2f}"
    return (reverse("recognition:photo_crop", args=[photo.pk]), caption, score)


@admin.register(EnrollmentPhoto)
class EnrollmentPhotoAdmin(admin.ModelAdmin):
    list_display = [
        "id", "person", "status", "quality_reason", "own_similarity", "other_similarity", "duplicate_of", "uploaded_at",
    ]  # fmt: skip
    list_filter = ["status", "quality_reason"]
    list_select_related = ["person", "duplicate_of"]
    search_fields = ["person__name"]
    readonly_fields = [
        "faces", "quality_reason", "quality_message", "quality", "box", "crop", "duplicate_of",
        "own_similarity", "own_photo", "other_similarity", "other_photo", "uploaded_by",
    ]  # fmt: skip
    actions = ["approve_photos", "reject_photos"]

    @admin.display(description="Faces compared")
    def faces(self, obj: EnrollmentPhoto) -> str:
        """The photo beside the person's closest accepted photo and the closest other person's."""
        shown = [
            _face(obj, "this photo", None),
            _face(obj.own_photo, f"{obj.person.name} (closest accepted)", obj.own_similarity),
            _face(obj.other_photo, f"{obj.other_photo.person.name if obj.other_photo else ''}", obj.other_similarity),
        ]
        return format_html_join(
            "",
            '<figure class="review-face"><img src="{}" width="112" height="112" alt=""><figcaption>{}{}</figcaption>'
            "</figure>",
            [face for face in shown if face is not None],
        ) or format_html("{}", "no usable face")

    @admin.action(description="Approve the selected photos into the gallery", permissions=["change"])
    def approve_photos(self, request: HttpRequest, queryset: QuerySet[EnrollmentPhoto]) -> None:
        done = 0
        for photo in queryset.order_by("id"):
            try:
                photo_accept(photo=photo, by=request.user)
            except EnrollmentError as exc:
                self.message_user(request, f"Photo {photo.pk} cannot be approved: {exc}", messages.ERROR)
            else:
                done += 1
        self.message_user(request, f"{done} photo(s) approved into the gallery.", messages.SUCCESS)

    @admin.action(description="Reject the selected photos (removed from the gallery)", permissions=["change"])
    def reject_photos(self, request: HttpRequest, queryset: QuerySet[EnrollmentPhoto]) -> None:
        photos = list(queryset.order_by("id"))
        for photo in photos:
            photo_reject(photo=photo, by=request.user, reason="Rejected in the admin.")
        self.message_user(request, f"{len(photos)} photo(s) rejected.", messages.SUCCESS)


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
