"""The offline allow-list fail mode is a real choice now: model, database, API (with its
explanation in OpenAPI), admin and the provisioned agent config all accept it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accessctl.models import FAIL_MODE_HELP, Door
from devices.provisioning import agent_config, device_provision
from tests.accessctl.helpers import user_create
from tests.api_support import token_client


def test_every_mode_is_explained() -> None:
    for mode in ("secure:", "safe:", "allowlist:"):
        assert mode in FAIL_MODE_HELP
    assert "ACCESSCTL_ALLOWLIST_MAX_AGE" in FAIL_MODE_HELP
    assert Door._meta.get_field("fail_mode").help_text == FAIL_MODE_HELP
    assert "not available" not in dict(Door.FailMode.choices)["allowlist"]


@pytest.mark.django_db
def test_model_and_database_accept_allowlist() -> None:
    door = Door(name="Lobby", fail_mode=Door.FailMode.ALLOWLIST)
    door.full_clean()
    door.save()
    Door.objects.filter(pk=door.pk).update(fail_mode="safe")
    Door.objects.filter(pk=door.pk).update(fail_mode="allowlist")
    assert Door.objects.get().fail_mode == "allowlist"
    with pytest.raises(Exception, match="fail_mode"):
        Door(name="Other", fail_mode="open-sesame").full_clean()


@pytest.mark.django_db
def test_api_accepts_allowlist_and_explains_it() -> None:
    client = token_client(["doors:read", "doors:write"])
    created = client.post("/api/v1/doors/", {"name": "Lobby", "fail_mode": "allowlist"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["fail_mode"] == "allowlist"
    url = f"/api/v1/doors/{created.json()['id']}/"
    assert client.patch(url, {"fail_mode": "safe"}, format="json").status_code == 200
    assert client.patch(url, {"fail_mode": "nonsense"}, format="json").status_code == 400
    assert Door.objects.get().fail_mode == "safe"
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    assert "allowlist: the device recognises" in schema.content.decode()


@pytest.mark.django_db
def test_admin_form_accepts_allowlist(client) -> None:
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    add = reverse("admin:accessctl_door_add")
    form = {"name": "Main", "location": "", "mode": "normal", "fail_mode": "allowlist", "relay_pulse_ms": 3000,
            "timezone": "UTC"}  # fmt: skip
    response = client.post(add, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Door.objects.get().fail_mode == "allowlist"
    page = client.get(reverse("admin:accessctl_door_change", args=[Door.objects.get().pk]))
    assert "allowlist: the device recognises" in page.content.decode()


@pytest.mark.django_db
def test_provisioning_writes_allowlist_into_the_agent_config() -> None:
    door = Door.objects.create(name="Vault", fail_mode=Door.FailMode.ALLOWLIST)
    provisioned = device_provision(uid="vault-1", door=door)
    assert 'fail_mode = "allowlist"' in agent_config(provisioned, key_path="/k")
