"""Admin for enrolment photos (with the review of held photos), embeddings, calibrations, the model
registry (read-only, moved by actions) and recognition health."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from accessctl.exceptions import DomainError
from recognition.calibration import CalibrationError, threshold_for
from recognition.enrollment import EnrollmentError, photo_accept, photo_reject
from recognition.gallery_migration import (
    gallery_migration_pause,
    gallery_migration_progress,
    gallery_migration_resume,
    gallery_migration_start,
)
from recognition.model_registry import model_version_transition, model_version_verify
from recognition.models import (
    EnrollmentPhoto,
    FaceEmbedding,
    GalleryMigration,
    ModelCalibration,
    ModelStateChange,
    ModelVersion,
    RecognitionHealth,
)
from recognition.shadow import shadow_summary


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


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by services only: shown, never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ModelStateChangeInline(admin.TabularInline):
    model = ModelStateChange
    fields = ["at", "from_state", "to_state", "actor_name", "forced", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(_ReadOnlyAdmin):
    """The registry: registered with ``manage.py model_registry register``, moved with the actions
    (each runs :func:`recognition.model_registry.model_version_transition`, which verifies before
    activating)."""

    list_display = [
        "model_version", "state", "backend", "lfw_accuracy", "ms_per_face", "calibrated_threshold", "signed",
        "gallery", "state_changed_at",
    ]  # fmt: skip
    list_filter = ["state", "backend"]
    list_select_related = ["gallery_migration"]
    inlines = [ModelStateChangeInline]
    actions = [
        "verify_bundles", "promote", "pause_gallery", "resume_gallery", "to_shadow", "to_candidate", "to_retired",
        "to_active",
    ]  # fmt: skip

    @admin.display(description="gallery build")
    def gallery(self, obj: ModelVersion) -> str:
        migration = getattr(obj, "gallery_migration", None)
        if migration is None:
            return "-"
        p = gallery_migration_progress(migration)
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s else ""
        failed = f", {p.failed} failed" if p.failed else ""
        error = f" ({p.last_error})" if p.last_error else ""
        return f"{p.state}: {p.done}/{p.total} ({p.percent:g} %), {p.photos_per_s:g} photos/s{eta}{failed}{error}"

    @admin.action(description="Promote (build its gallery in the background, then activate)", permissions=["change"])
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Promote exactly one version.", messages.ERROR)
            return
        try:
            migration = gallery_migration_start(model=queryset.get(), actor=request.user, note="admin")
            self.message_user(request, f"{migration.model.model_version}: gallery build {migration.state}")
        except DomainError as exc:
            self.message_user(request, f"{exc.code}: {exc.message}", messages.ERROR)

    def _gallery(self, request: HttpRequest, queryset: QuerySet[ModelVersion], service: Any) -> None:
        for model in queryset:
            migration = GalleryMigration.objects.select_related("model").filter(model=model).first()
            if migration is None:
                self.message_user(request, f"{model.model_version}: no gallery build", messages.ERROR)
                continue
            try:
                migration = service(migration=migration, actor=request.user)
                self.message_user(request, f"{model.model_version}: gallery build {migration.state}")
            except DomainError as exc:
                self.message_user(request, f"{exc.code}: {exc.message}", messages.ERROR)

    @admin.action(description="Pause the gallery build", permissions=["change"])
    def pause_gallery(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._gallery(request, queryset, gallery_migration_pause)

    @admin.action(description="Resume the gallery build", permissions=["change"])
    def resume_gallery(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._gallery(request, queryset, gallery_migration_resume)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Needed for the actions; every field stays read-only (get_readonly_fields).
        return request.user.has_perm("recognition.change_modelversion")

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in ModelVersion._meta.fields] + (["shadow_figures"] if obj is not None else [])

    @admin.display(description="shadow decisions")
    def shadow_figures(self, obj: ModelVersion) -> SafeString:
        """Agreement with the active model, the confusion matrix and both similarity histograms."""
        figures = shadow_summary(model=obj)
        buckets = figures["similarity"]["buckets"]
        peak = max([1, *(max(b["active"], b["shadow"]) for b in buckets)])
        shown = [
            {**b, "active_pct": round(100 * b["active"] / peak), "shadow_pct": round(100 * b["shadow"] / peak)}
            for b in buckets
        ]
        agreement = figures["agreement"]
        rates = {
            key: "-" if agreement[f"{key}_rate"] is None else f"{100 * agreement[f'{key}_rate']:.1f} %"
            for key in ("person", "decision", "both")
        }
        html = render_to_string(
            "admin/recognition/shadow_figures.html", {"figures": figures, "buckets": shown, "rates": rates}
        )
        return mark_safe(html)  # noqa: S308 - rendered by the template engine, every value escaped there

    @admin.display(description="threshold")
    def calibrated_threshold(self, obj: ModelVersion) -> str:
        try:
            return f"{threshold_for(obj.model_version):.3f}"
        except CalibrationError:
            return "-"

    @admin.display(boolean=True)
    def signed(self, obj: ModelVersion) -> bool:
        return bool(obj.signature)

    @admin.action(description="Verify signature and files", permissions=["view"])
    def verify_bundles(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for model in queryset:
            try:
                model_version_verify(model=model)
                self.message_user(request, f"{model.model_version}: signature and files verified")
            except DomainError as exc:
                self.message_user(request, f"{exc.code}: {exc.message}", messages.ERROR)

    def _move(self, request: HttpRequest, queryset: QuerySet[ModelVersion], state: str) -> None:
        if state == ModelVersion.State.ACTIVE and queryset.count() != 1:
            self.message_user(request, "Activate exactly one version.", messages.ERROR)
            return
        for model in queryset:
            try:
                model_version_transition(model=model, to_state=state, actor=request.user, note="admin")
                self.message_user(request, f"{model.model_version}: {state}")
            except DomainError as exc:
                self.message_user(request, f"{exc.code}: {exc.message}", messages.ERROR)

    @admin.action(description="Move to shadow", permissions=["change"])
    def to_shadow(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._move(request, queryset, ModelVersion.State.SHADOW)

    @admin.action(description="Move back to candidate", permissions=["change"])
    def to_candidate(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._move(request, queryset, ModelVersion.State.CANDIDATE)

    @admin.action(description="Retire (removes its vectors and index; refused while devices run it)",
                  permissions=["change"])  # fmt: skip
    def to_retired(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._move(request, queryset, ModelVersion.State.RETIRED)

    @admin.action(description="Activate (verifies; retires the active one)", permissions=["change"])
    def to_active(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._move(request, queryset, ModelVersion.State.ACTIVE)


@admin.register(RecognitionHealth)
class RecognitionHealthAdmin(_ReadOnlyAdmin):
    list_display = ["door", "model_version", "status", "recent_count", "baseline_count", "evaluated_at"]
    list_filter = ["status", "model_version"]
    list_select_related = ["door"]
    readonly_fields = [
        "door", "model_version", "status", "evaluated_at", "recent_count", "recent", "baseline_count",
        "baseline_from", "baseline_until", "baseline_set_at", "baseline_set_by", "baseline",
    ]  # fmt: skip
