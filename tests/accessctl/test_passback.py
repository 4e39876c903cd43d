"""Anti-passback per area (issue 23): enter, enter again denied (hard) or alarmed (soft), exit,
enter granted; the operator's reset (admin and API) is audited; a repeat within the cooldown is a
suppressed repeat, not a second entry."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from accessctl.audit import chain_verify
from accessctl.codes import Reason
from accessctl.decisions import access_decide
from accessctl.models import AccessEvent, AccessGroup, Alarm, Area, AreaPresence, Door, Person
from tests.accessctl.helpers import user_create
from tests.api_support import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def site() -> dict:
    entry, exit_ = Door.objects.create(name="Turnstile in"), Door.objects.create(name="Turnstile out")
    side = Door.objects.create(name="Side entrance")
    area = Area.objects.create(name="Plant", passback=Area.Passback.HARD)
    area.entry_doors.add(entry, side)
    area.exit_doors.add(exit_)
    ada = Person.objects.create(name="Ada")
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(entry, exit_, side)
    staff.people.add(ada)
    return {"entry": entry, "exit": exit_, "side": side, "area": area, "ada": ada, "t": timezone.now()}


def at(site: dict, door: str, seconds: float = 0.0, person: Person | None = None) -> AccessEvent:
    site["t"] += dt.timedelta(seconds=max(seconds, 1.0))
    event, created = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=site["t"], device_id=None, device_uid=f"{door}-cam",
        door=site[door], person_id=(person or site["ada"]).pk, unknown_reason=Reason.MATCHED,
    )  # fmt: skip
    assert created
    return event


def inside(site: dict) -> bool:
    return AreaPresence.objects.get(area=site["area"], person=site["ada"]).inside


def test_hard_enter_enter_again_denied_exit_enter_granted(site) -> None:
    assert at(site, "entry").reason == Reason.MATCHED and inside(site)
    again = at(site, "side")  # another entry door of the same area
    assert (again.decision, again.reason) == ("deny", Reason.ANTI_PASSBACK)
    assert again.details["anti_passback"] == {"area_id": site["area"].pk, "area": "Plant", "mode": "hard"}
    assert inside(site)  # a denial moves nobody
    assert at(site, "exit").reason == Reason.MATCHED and not inside(site)
    assert at(site, "entry").reason == Reason.MATCHED and inside(site)
    assert not Alarm.objects.exists()
    assert chain_verify().ok


def test_soft_grants_and_raises_one_alarm(site) -> None:
    Area.objects.filter(pk=site["area"].pk).update(passback=Area.Passback.SOFT)
    at(site, "entry")
    again = at(site, "entry")
    assert (again.decision, again.reason) == ("grant", Reason.MATCHED)
    assert again.details["anti_passback"]["mode"] == "soft"
    [alarm] = Alarm.objects.filter(kind=Alarm.Kind.ANTI_PASSBACK)
    assert alarm.event_id == again.pk and alarm.details["subject"] == str(site["ada"].uid)
    at(site, "exit")
    at(site, "entry")
    assert Alarm.objects.count() == 1


def test_off_exits_never_refused_and_other_people_unaffected(site) -> None:
    bob = Person.objects.create(name="Bob")
    AccessGroup.objects.get(name="Staff").people.add(bob)
    assert at(site, "exit", person=bob).reason == Reason.MATCHED  # never seen entering: may still leave
    at(site, "entry")
    assert at(site, "entry", person=bob).reason == Reason.MATCHED
    Area.objects.filter(pk=site["area"].pk).update(passback=Area.Passback.OFF)
    assert at(site, "entry").reason == Reason.MATCHED


def test_a_repeat_within_the_cooldown_is_not_a_second_entry(site) -> None:
    Door.objects.filter(pk=site["entry"].pk).update(cooldown_s=10)
    site["entry"].refresh_from_db()
    at(site, "entry")
    assert at(site, "entry", 2).reason == Reason.SUPPRESSED_REPEAT
    assert at(site, "entry", 20).reason == Reason.ANTI_PASSBACK  # past the cooldown: a new decision


def test_operator_reset_through_the_api_and_the_admin_is_audited(site, client) -> None:
    at(site, "entry")
    url = f"/api/v1/areas/{site['area'].pk}/reset/"
    api = token_client(["doors:read", "doors:write"])  # an integrator's token: not an operator's act
    assert api.post(url, {"person": site["ada"].pk}, format="json").status_code == 403
    client.force_login(user_create("viewer", "accessctl.view_area"))
    assert client.post(url, {"person": site["ada"].pk}, content_type="application/json").status_code == 403
    assert inside(site)
    operator = user_create("op", "accessctl.operate_doors", "accessctl.view_area")
    client.force_login(operator)
    response = client.post(url, {"person": site["ada"].pk}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["reason"] == Reason.ANTI_PASSBACK_RESET
    assert not inside(site)
    reset = AccessEvent.objects.get(reason=Reason.ANTI_PASSBACK_RESET)
    assert reset.actor_id == operator.pk and reset.source == "operator" and reset.details["was_inside"] is True
    assert at(site, "entry").reason == Reason.MATCHED
    # the admin action, by a superuser
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    presence = AreaPresence.objects.get(area=site["area"], person=site["ada"])
    response = client.post(
        reverse("admin:accessctl_areapresence_changelist"),
        {"action": "reset_passback", "_selected_action": [presence.pk]},
    )
    assert response.status_code == 302
    assert not inside(site) and AccessEvent.objects.filter(reason=Reason.ANTI_PASSBACK_RESET).count() == 2
    assert at(site, "entry").reason == Reason.MATCHED


def test_areas_api_crud(site, client) -> None:
    client.force_login(user_create("root2", is_staff=True, is_superuser=True))
    created = client.post(
        "/api/v1/areas/",
        {"name": "Lab", "passback": "soft", "entry_doors": [site["entry"].pk], "exit_doors": [site["exit"].pk]},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    listed = client.get("/api/v1/areas/", {"passback": "soft"}).json()
    assert [a["name"] for a in listed["results"]] == ["Lab"]
    assert listed["results"][0]["entry_doors"] == [site["entry"].pk]
