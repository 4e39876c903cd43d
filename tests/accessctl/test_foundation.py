"""The foundation: real PostgreSQL with pgvector, the append-only log, the login wall."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from accessctl.audit import GENESIS_HASH, EventDraft, chain_verify, event_record, events_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent
from recognition.models import EMBEDDING_DIMS
from tests.accessctl.helpers import superuser_execute

pytestmark = pytest.mark.django_db


def test_database_is_postgres_with_pgvector() -> None:
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)


def test_gallery_has_hnsw_cosine_indexes() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'recognition_faceembedding'")
        defs = [row[0] for row in cursor.fetchall()]
    hnsw = [d for d in defs if "hnsw" in d]
    assert all("vector_cosine_ops" in d and "model_version" in d for d in hnsw)
    for model_version, dim in EMBEDDING_DIMS.items():  # every model we can embed with is indexed
        assert any(f"'{model_version}'" in d and f"vector({dim})" in d for d in hnsw), model_version


def _event(**overrides: object) -> AccessEvent:
    fields = {
        "detection_id": None,
        "occurred_at": dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC),
        "decision": Decision.DENY,
        "reason": Reason.UNKNOWN_FACE,
        "device_uid": "door-1",
    }
    fields.update(overrides)
    event, _ = event_record(**fields)  # type: ignore[arg-type]
    return event


def test_events_are_hash_chained_and_verifiable() -> None:
    first = _event()
    second = _event(decision=Decision.GRANT, reason=Reason.MATCHED, similarity=0.71)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    report = chain_verify()
    assert report.ok and report.checked == 2


def test_event_record_is_idempotent_on_detection_id() -> None:
    first, created = event_record(
        detection_id="6f1c1d7e-4f0a-4d39-9a53-44d1ea7e0a01",
        occurred_at=dt.datetime(2026, 1, 5, tzinfo=dt.UTC),
        decision=Decision.DENY,
        reason=Reason.UNKNOWN_FACE,
    )
    again, created_again = event_record(
        detection_id="6f1c1d7e-4f0a-4d39-9a53-44d1ea7e0a01",
        occurred_at=dt.datetime(2026, 1, 5, tzinfo=dt.UTC),
        decision=Decision.GRANT,
        reason=Reason.MATCHED,
    )
    assert created and not created_again
    assert again.pk == first.pk and again.decision == "deny"
    assert AccessEvent.objects.count() == 1


def test_events_recorded_together_chain_in_order_and_skip_known_detections() -> None:
    at = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    known = _event()
    drafts = [
        EventDraft(detection_id=uuid.uuid4(), occurred_at=at, decision=Decision.GRANT, reason=Reason.MATCHED),
        EventDraft(detection_id=known.detection_id, occurred_at=at, decision=Decision.GRANT, reason=Reason.MATCHED),
        EventDraft(detection_id=None, occurred_at=at, decision=Decision.DENY, reason=Reason.UNKNOWN_FACE),
    ]
    drafts.append(EventDraft(detection_id=drafts[0].detection_id, occurred_at=at, decision=Decision.DENY,
                             reason=Reason.EXPIRED))  # fmt: skip
    recorded = events_record(drafts)
    assert [created for _, created in recorded] == [True, False, True, False]
    assert recorded[1][0].pk == known.pk and recorded[3][0] is recorded[0][0]
    new = [recorded[0][0], recorded[2][0]]
    assert new[0].prev_hash == known.hash and new[1].prev_hash == new[0].hash and new[1].pk > new[0].pk
    assert AccessEvent.objects.count() == 3 and chain_verify().ok
    assert events_record([]) == []


def test_database_refuses_to_rewrite_or_delete_events() -> None:
    event = _event()
    # The application's role may not update hashed columns nor delete (accessctl/project/dbroles.py) ...
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
        AccessEvent.objects.filter(pk=event.pk).update(decision="grant")
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
        AccessEvent.objects.filter(pk=event.pk).delete()
    # ... and the trigger lets it only clear the privacy columns it may update.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AccessEvent.objects.filter(pk=event.pk).update(snapshot="crops/someone-else.jpg")
    # Dropping an expired snapshot reference is allowed (retention), and the chain stays intact.
    AccessEvent.objects.filter(pk=event.pk).update(snapshot="")
    assert chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_tampering_is_detected_at_the_first_broken_link() -> None:
    _event()
    victim = _event(reason=Reason.NOT_IN_GROUP)
    _event()
    # An attacker with superuser rights bypasses triggers; the hash chain still tells.
    superuser_execute(
        "UPDATE accessctl_accessevent SET reason = 'matched', decision = 'grant' WHERE id = %s",
        [victim.pk],
        replica=True,
    )
    report = chain_verify()
    assert report.first_broken_id == victim.pk
    assert report.checked == 1


@pytest.mark.parametrize("path", ["/", "/admin/", "/admin/accessctl/person/"])
def test_pages_require_login(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert "login" in response["Location"]


def test_login_page_and_health_are_public(client) -> None:
    assert client.get(reverse("login")).status_code == 200
    assert client.get(reverse("healthz")).json() == {"status": "ok"}


def test_operator_can_sign_in_and_see_dashboard(client, django_user_model) -> None:
    django_user_model.objects.create_user("olga", password="s3cret-pass-123")
    response = client.post(reverse("login"), {"username": "olga", "password": "s3cret-pass-123"})
    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200
