"""Enrolment UI for administrators: people, photos with quality verdicts, review, bulk import.

Thin adapters over ``recognition.enrollment`` (one photo at a time, synchronously, so the
administrator sees the verdict at once) and the ``bulk_import_run`` Celery task (whole folders or
zip archives, with progress polled from ``import/<job>/status/``).
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accessctl.forms import PersonCreateForm, PhotoRejectForm, PhotoUploadForm
from accessctl.models import Person
from recognition.models import EnrollmentPhoto

logger = logging.getLogger(__name__)

ENROL_PERMISSION = "recognition.add_enrollmentphoto"
IMPORT_PREFIX = "imports"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SESSION_JOBS = "bulk_import_jobs"


def enrol_admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff users with the enrolment permission only; everyone else gets 403 (fail closed)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not (user.is_authenticated and user.is_active and user.is_staff and user.has_perm(ENROL_PERMISSION)):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapped


@enrol_admin_required
def enrol_index(request: HttpRequest) -> HttpResponse:
    """Pick a person to enrol (search) or create one."""
    form = PersonCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        person = form.save()
        logger.info("person %s created for enrolment by user %s", person.pk, request.user.pk)
        return redirect("recognition:enrol_person", pk=person.pk)
    query = request.GET.get("q", "").strip()
    people = Person.objects.annotate(
        accepted=Count("photos", filter=Q(photos__status=EnrollmentPhoto.Status.ACCEPTED)),
        pending=Count(
            "photos", filter=Q(photos__status__in=[EnrollmentPhoto.Status.PENDING, EnrollmentPhoto.Status.HELD])
        ),
    ).order_by("name", "id")
    if query:
        people = people.filter(Q(name__icontains=query) | Q(external_id__iexact=query))
    page = Paginator(people, 50).get_page(request.GET.get("page"))
    return render(request, "recognition/enrol_index.html", {"form": form, "page": page, "query": query})


@enrol_admin_required
def enrol_person(request: HttpRequest, pk: int) -> HttpResponse:
    """A person's photos with crop, verdict and reason; held photos beside the face they were
    compared with; upload more (POST: checked together, see ``photos_enroll``)."""
    from recognition.enrollment import PhotoUpload, photos_enroll

    person = get_object_or_404(Person, pk=pk)
    form = PhotoUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        if form.is_valid():
            verdicts: dict[str, int] = {}
            uploads = [PhotoUpload(image=upload, filename=upload.name) for upload in form.cleaned_data["photos"]]
            for photo in photos_enroll(person=person, uploads=uploads, uploaded_by=request.user):
                label = str(photo.get_status_display()).lower()
                verdicts[label] = verdicts.get(label, 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in sorted(verdicts.items()))
            held = verdicts.get(str(EnrollmentPhoto.Status.HELD.label).lower(), 0)
            notify = messages.warning if held else messages.success
            notify(request, f"{sum(verdicts.values())} photo(s) processed: {summary}.")
            return redirect("recognition:enrol_person", pk=person.pk)
        messages.error(request, "Choose one or more photos to upload.")
    photos = person.photos.select_related("duplicate_of", "own_photo", "other_photo__person").order_by(
        "-uploaded_at", "-id"
    )
    counts = {s: 0 for s in EnrollmentPhoto.Status.values}
    for photo in photos:
        counts[photo.status] += 1
    return render(
        request, "recognition/enrol_person.html", {"person": person, "photos": photos, "form": form, "counts": counts}
    )


def _photo_file(photo: EnrollmentPhoto, which: str) -> FileResponse:
    field = photo.crop if which == "crop" else photo.image
    if not field:
        raise Http404("no such image")
    try:
        file = field.storage.open(field.name, "rb")
    except (FileNotFoundError, OSError) as exc:
        raise Http404("image missing") from exc
    content_type = "image/png" if field.name.lower().endswith(".png") else "image/jpeg"
    response = FileResponse(file, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
@enrol_admin_required
def photo_crop(request: HttpRequest, pk: int) -> FileResponse:
    return _photo_file(get_object_or_404(EnrollmentPhoto, pk=pk), "crop")


@require_GET
@enrol_admin_required
def photo_image(request: HttpRequest, pk: int) -> FileResponse:
    return _photo_file(get_object_or_404(EnrollmentPhoto, pk=pk), "image")


@require_POST
@enrol_admin_required
def photo_accept_view(request: HttpRequest, pk: int) -> HttpResponse:
    from recognition.enrollment import EnrollmentError, photo_accept

    photo = get_object_or_404(EnrollmentPhoto, pk=pk)
    try:
        photo_accept(photo=photo, by=request.user)
    except EnrollmentError as exc:
        messages.error(request, f"Photo {photo.pk} cannot be accepted: {exc}")
    else:
        messages.success(request, f"Photo {photo.pk} accepted into the gallery.")
    return redirect("recognition:enrol_person", pk=photo.person_id)


@require_POST
@enrol_admin_required
def photo_reject_view(request: HttpRequest, pk: int) -> HttpResponse:
    from recognition.enrollment import photo_reject

    photo = get_object_or_404(EnrollmentPhoto, pk=pk)
    form = PhotoRejectForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    photo_reject(photo=photo, by=request.user, reason=reason)
    messages.success(request, f"Photo {photo.pk} rejected.")
    return redirect("recognition:enrol_person", pk=photo.person_id)


# --- Bulk import: upload (in batches, under Django's per-request file limit), start, poll. ------


def _clean_relative_path(raw: str) -> str | None:
    """``Person_Name/photo.jpg`` from a browser's relative path; ``None`` for anything unsafe."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) < 2 or ".." in parts or any(p.startswith(".") for p in parts):
        return None
    if posixpath.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
        return None
    return "/".join(parts[-2:])  # <Person_Name>/<file>: deeper prefixes are the chosen folder itself


def _job_owned(request: HttpRequest, job: str) -> bool:
    return job in request.session.get(SESSION_JOBS, [])


def _job_remember(request: HttpRequest, job: str) -> None:
    jobs = [*request.session.get(SESSION_JOBS, [])[-19:], job]
    request.session[SESSION_JOBS] = jobs


@enrol_admin_required
def bulk_import(request: HttpRequest) -> HttpResponse:
    """The bulk import page (a folder of ``<Person_Name>/*.jpg`` or a zip of the same)."""
    from django.conf import settings

    context = {"max_batch": 50, "max_upload_bytes": settings.MAX_IMPORT_REQUEST_BYTES}
    return render(request, "recognition/bulk_import.html", context)


@require_POST
@enrol_admin_required
def bulk_import_upload(request: HttpRequest) -> JsonResponse:
    """Stage uploaded files for a job: ``archive`` (a zip) or ``files`` with their ``paths``."""
    job = request.POST.get("job") or uuid.uuid4().hex
    if request.POST.get("job") and not _job_owned(request, job):
        raise PermissionDenied
    try:
        uuid.UUID(hex=job)
    except ValueError as exc:
        raise Http404("bad job id") from exc
    _job_remember(request, job)
    stored = skipped = 0
    archive = request.FILES.get("archive")
    if archive is not None:
        default_storage.save(f"{IMPORT_PREFIX}/{job}/archive.zip", archive)
        stored += 1
    files, paths = request.FILES.getlist("files"), request.POST.getlist("paths")
    if len(files) != len(paths):
        return JsonResponse({"error": "each file needs its relative path"}, status=400)
    for upload, raw in zip(files, paths, strict=True):
        relative = _clean_relative_path(raw)
        if relative is None:
            skipped += 1
            continue
        default_storage.save(f"{IMPORT_PREFIX}/{job}/files/{relative}", upload)
        stored += 1
    return JsonResponse({"job": job, "stored": stored, "skipped": skipped})


@require_POST
@enrol_admin_required
def bulk_import_start(request: HttpRequest, job: str) -> JsonResponse:
    from recognition.tasks import bulk_import_run

    if not _job_owned(request, job):
        raise PermissionDenied
    bulk_import_run.apply_async(kwargs={"job_id": job, "user_id": request.user.pk}, task_id=job)
    logger.info("bulk import %s started by user %s", job, request.user.pk)
    return JsonResponse({"job": job, "status_url": reverse("recognition:bulk_import_status", args=[job])})


@require_GET
@enrol_admin_required
def bulk_import_status(request: HttpRequest, job: str) -> JsonResponse:
    """Progress of a job as reported by the task: ``state`` and counts."""
    from celery.result import AsyncResult

    if not _job_owned(request, job):
        raise PermissionDenied
    result = AsyncResult(job)
    info = result.info if isinstance(result.info, dict) else {}
    body: dict[str, Any] = {"job": job, "state": result.state, **info}
    if result.state == "FAILURE":
        body["error"] = "The import failed; see the worker log."
    return JsonResponse(body)
