"""A door cannot be set to the offline allow-list fail mode until the allow-list exists: every
entry point refuses it with one clear message (it used to be saved and silently behave as secure)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from accessctl.models import FAIL_MODE_ALLOWLIST_UNAVAILABLE, Door
from tests.accessctl.helpers import superuser_execute, user_create
from tests.api_support import token_client

MESSAGE = "the offline allow-list is not available yet; choose secure or safe"


def test_the_message_says_what_to_choose() -> None:
    assert FAIL_MODE_ALLOWLIST_UNAVAILABLE == MESSAGE


@pytest.mark.django_db
def test_model_validation_refuses_allowlist() -> None:
    door = Door(name="Lobby", fail_mode=Door.FailMode.ALLOWLIST)
    with pytest.raises(ValidationError) as refused:
        door.full_clean()
    assert refused.value.message_dict == {"fail_mode": [MESSAGE]}
    Door(name="Lobby", fail_mode=Door.FailMode.SAFE).full_clean()


@pytest.mark.django_db
def test_database_refuses_allowlist() -> None:
    with pytest.raises(IntegrityError, match="door_fail_mode_available"), transaction.atomic():
        Door.objects.create(name="Lobby", fail_mode="allowlist")
    door = Door.objects.create(name="Lobby", fail_mode="safe")
    with pytest.raises(IntegrityError, match="door_fail_mode_available"), transaction.atomic():
        Door.objects.filter(pk=door.pk).update(fail_mode="allowlist")


@pytest.mark.django_db
def test_api_refuses_allowlist() -> None:
    client = token_client(["doors:read", "doors:write"])
    refused = client.post("/api/v1/doors/", {"name": "Lobby", "fail_mode": "allowlist"}, format="json")
    assert refused.status_code == 400
    assert MESSAGE in str(refused.json()), refused.json()
    created = client.post("/api/v1/doors/", {"name": "Lobby", "fail_mode": "safe"}, format="json")
    assert created.status_code == 201, created.content
    url = f"/api/v1/doors/{created.json()['id']}/"
    assert client.patch(url, {"fail_mode": "allowlist"}, format="json").status_code == 400
    assert Door.objects.get().fail_mode == "safe"


@pytest.mark.django_db
def test_admin_form_refuses_allowlist(client) -> None:
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    add = reverse("admin:accessctl_door_add")
    form = {"name": "Main", "location": "", "mode": "normal", "fail_mode": "allowlist", "relay_pulse_ms": 3000,
            "timezone": "UTC"}  # fmt: skip
    response = client.post(add, form)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"fail_mode": [MESSAGE]}
    assert not Door.objects.exists()
    response = client.post(add, {**form, "fail_mode": "secure"})
    assert response.status_code == 302, response.context["adminform"].form.errors


def _data_migration() -> object:
    """The migration that brought the check (found by name: its number may change)."""
    folder = Path(importlib.import_module("accessctl.migrations").__file__).parent
    (path,) = folder.glob("*_door_fail_mode_available.py")
    return importlib.import_module(f"accessctl.migrations.{path.stem}")


@pytest.mark.django_db(transaction=True)
def test_the_migration_sets_allowlist_doors_to_secure() -> None:
    Door.objects.create(name="Kept", fail_mode="safe")
    superuser_execute("ALTER TABLE accessctl_door DROP CONSTRAINT door_fail_mode_available")
    try:
        superuser_execute("INSERT INTO accessctl_door (name, location, timezone, mode, fail_mode, relay_pulse_ms, "
                          "created_at) VALUES ('Old', '', 'UTC', 'normal', 'allowlist', 3000, now())")  # fmt: skip
        _data_migration().allowlist_doors_to_secure(apps, SimpleNamespace(connection=connection))
        assert dict(Door.objects.values_list("name", "fail_mode")) == {"Kept": "safe", "Old": "secure"}
    finally:
        superuser_execute("DELETE FROM accessctl_door WHERE fail_mode = 'allowlist'")
        superuser_execute(
            "ALTER TABLE accessctl_door ADD CONSTRAINT door_fail_mode_available CHECK (fail_mode IN ('secure', 'safe'))"
        )
