"""Admin actions for data-subject rights on people: export their data, erase them (with confirmation).

Wired by one import in ``accessctl/admin.py``; the actions call :mod:`accessctl.privacy.erasure` only.
"""

from __future__ import annotations

import io
import logging
import zipfile

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import engines

from accessctl.models import Person
from accessctl.privacy.erasure import person_erase, person_export

logger = logging.getLogger(__name__)

_CONFIRM_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block content %}
<h1>Erase {{ people|length }} {% if people|length == 1 %}person{% else %}people{% endif %}?</h1>
<p>This permanently deletes their enrolment photos, face embeddings, face crops and snapshots, and
their person records. Their access events stay in the log under a pseudonym. This cannot be undone;
export their data first if it was requested.</p>
<ul>{% for p in people %}<li>{{ p.name }} ({{ p.uid }})</li>{% endfor %}</ul>
<form method="post">{% csrf_token %}
{% for p in people %}<input type="hidden" name="{{ selected }}" value="{{ p.pk }}">{% endfor %}
<input type="hidden" name="action" value="erase_people">
<input type="hidden" name="confirm_erase" value="yes">
<input type="submit" value="Yes, erase permanently">
<a href="" class="button cancel-link">No, take me back</a>
</form>
{% endblock %}
"""


@admin.action(description="Export personal data (zip)", permissions=["change"])
def export_people(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Person]) -> HttpResponse:
    people = list(queryset.order_by("id"))
    if len(people) == 1:
        data = person_export(person=people[0])
        filename = f"person-{people[0].uid}.zip"
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as outer:
            for person in people:
                outer.writestr(f"person-{person.uid}.zip", person_export(person=person))
        data, filename = buffer.getvalue(), "people-export.zip"
    logger.info("user %s exported personal data of people %s", request.user.pk, [p.pk for p in people])
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.action(description="Erase selected people (right to erasure)…", permissions=["delete"])
def erase_people(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Person]) -> HttpResponse | None:
    people = list(queryset.order_by("id"))
    if request.POST.get("confirm_erase") != "yes":
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": "Erase people",
            "people": people,
            "selected": helpers.ACTION_CHECKBOX_NAME,
            "opts": modeladmin.model._meta,
        }
        html = engines["django"].from_string(_CONFIRM_TEMPLATE).render(context, request)
        return HttpResponse(html)
    for person in people:
        report = person_erase(person=person, actor=request.user)
        modeladmin.message_user(
            request,
            f"Erased {report.subject_uid}: {report.photos_deleted} photos, {report.embeddings_deleted} embeddings, "
            f"{report.files_deleted} files; {report.events_pseudonymised} events pseudonymised.",
            messages.SUCCESS,
        )
    return None
