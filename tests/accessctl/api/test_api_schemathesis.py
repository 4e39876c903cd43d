"""Property-based contract run: every operation of the OpenAPI schema, fuzzed by schemathesis
against the live WSGI app (real database) with a token holding every scope, must never answer 5xx.

Bounded: ``max_examples=10`` per operation, derandomized, no example database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from recognition.enrollment import FaceAnalysis
from tests.api_support import issue_token

# Loaded at collection (schema generation needs no database). schemathesis' lazy
# ``pytest.from_fixture`` loader does not work with pytest 9.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    """Like Django's test client: keep the test's DB connection (and transaction) across WSGI requests."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(db) -> dict[str, str]:
    _, plaintext = issue_token(rate=1_000_000)
    return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, media_root: Path) -> None:
    """Photo uploads and identify run the real services with a stand-in face engine (no model load)."""
    vector = np.ones(128, dtype=np.float32) / np.sqrt(128)
    analysis = FaceAnalysis(
        ok=True, metrics={}, box=[0.0, 0.0, 10.0, 10.0], crop_jpeg=b"\xff\xd8", embedding=vector,
        model_version="sface-2021dec-int8bq", quality_score=0.5,
    )  # fmt: skip
    monkeypatch.setattr("recognition.enrollment.configured_embedder", lambda: object())
    monkeypatch.setattr("recognition.enrollment.face_analyse", lambda data, *, embedder: analysis)


@schema.parametrize()
@settings(
    max_examples=10,
    # Generated cases only: schemathesis' coverage phase would add dozens of boundary cases per operation.
    phases=[Phase.generate],
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.django_db
def test_api_never_answers_5xx(case, wsgi_in_test_transaction, auth_headers, fake_engine) -> None:
    case.call_and_validate(headers=auth_headers, checks=[not_a_server_error])
