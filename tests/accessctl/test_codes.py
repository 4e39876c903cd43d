"""The access log can store every reason code (model choices and the migrated database state)."""

from __future__ import annotations

from django.db.migrations.loader import MigrationLoader

from accessctl.codes import Reason
from accessctl.models import AccessEvent


def test_access_event_reason_choices_cover_every_reason() -> None:
    field = AccessEvent._meta.get_field("reason")
    assert {value for value, _ in field.choices} == {member.value for member in Reason}
    assert max(len(member.value) for member in Reason) <= field.max_length


def test_migrations_declare_every_reason() -> None:
    """The choices in the migration history equal the model's (a new code needs a migration)."""
    state = MigrationLoader(None, ignore_no_migrations=True).project_state()
    field = state.apps.get_model("accessctl", "AccessEvent")._meta.get_field("reason")
    assert {value for value, _ in field.choices} == {member.value for member in Reason}
