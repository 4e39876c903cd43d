"""Liveness: a door's policy (required, threshold override) and the scores on each access event.

The four new event columns are immutable like the others: the append-only trigger of 0003 is
replaced by one that also refuses updates of them (the privacy updates stay as they were). The
hash chain covers them for new events only when one is set (``accessctl.audit.event_hash``), so
events recorded before, all null there, keep their hashes and still verify. The purge function
(0007) reads whole rows and needs no change; the application role's grants (``dbroles``) give no
UPDATE on the new columns.
"""

import django.core.validators
from django.db import migrations, models

_IMMUTABLE = (
    "id, detection_id, occurred_at, recorded_at, source, door_id, device_id, device_uid, subject_uid, decision, "
    "reason, similarity, margin, threshold, model_version, details, prev_hash, hash"
)
_LIVENESS = "liveness_edge, liveness_frames, liveness_server, liveness_threshold"


def _trigger_function(columns: str) -> str:
    new = ", ".join(f"NEW.{c.strip()}" for c in columns.split(","))
    old = ", ".join(f"OLD.{c.strip()}" for c in columns.split(","))
    return f"""
CREATE OR REPLACE FUNCTION accessctl_event_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF coalesce(current_setting('accessctl.allow_event_purge', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'access events are append-only: delete of event % refused', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF ({new})
       IS DISTINCT FROM
       ({old})
       OR (NEW.person_id IS NOT NULL AND NEW.person_id IS DISTINCT FROM OLD.person_id)
       OR (NEW.actor_id IS NOT NULL AND NEW.actor_id IS DISTINCT FROM OLD.actor_id)
       OR (NEW.snapshot <> '' AND NEW.snapshot IS DISTINCT FROM OLD.snapshot) THEN
        RAISE EXCEPTION 'access events are append-only: update of event % refused', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accessctl", "0014_liveness_reasons"),
    ]

    operations = [
        migrations.AddField(
            model_name="accessevent",
            name="liveness_edge",
            field=models.FloatField(blank=True, help_text="The device's fused live score (0..1).", null=True),
        ),
        migrations.AddField(
            model_name="accessevent",
            name="liveness_frames",
            field=models.IntegerField(blank=True, help_text="Frames the device's score is fused over.", null=True),
        ),
        migrations.AddField(
            model_name="accessevent",
            name="liveness_server",
            field=models.FloatField(
                blank=True, help_text="The server's live score of the received crop (informational).", null=True
            ),
        ),
        migrations.AddField(
            model_name="accessevent",
            name="liveness_threshold",
            field=models.FloatField(blank=True, help_text="The live-score threshold applied.", null=True),
        ),
        migrations.AddField(
            model_name="door",
            name="liveness_required",
            field=models.BooleanField(
                db_default=False,
                default=False,
                help_text="Deny faces the device did not score as live (presentation attacks, and detections without a score).",
            ),
        ),
        migrations.AddField(
            model_name="door",
            name="liveness_threshold",
            field=models.FloatField(
                blank=True,
                help_text="Live-score threshold (0..1) override; empty uses the site's calibrated value.",
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(0.0),
                    django.core.validators.MaxValueValidator(1.0),
                ],
            ),
        ),
        migrations.AlterField(
            model_name="alarm",
            name="kind",
            field=models.CharField(
                choices=[
                    ("repeated_unknown", "repeated unknown faces"),
                    ("watchlist", "watchlist person seen"),
                    ("forged_signature", "forged or invalid signature"),
                    ("device_offline", "device offline"),
                    ("replay", "replayed message"),
                    ("bridge_deaf", "MQTT bridge stopped receiving"),
                    ("device_degraded", "device gets no answers"),
                    ("presentation_attack", "presentation attack (photo or screen)"),
                    ("repeated_attack", "repeated presentation attacks"),
                ],
                max_length=32,
            ),
        ),
        migrations.AddConstraint(
            model_name="door",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("liveness_threshold__isnull", True),
                    models.Q(("liveness_threshold__gte", 0.0), ("liveness_threshold__lte", 1.0)),
                    _connector="OR",
                ),
                name="door_liveness_threshold_range",
            ),
        ),
        migrations.RunSQL(
            sql=_trigger_function(f"{_IMMUTABLE}, {_LIVENESS}"), reverse_sql=_trigger_function(_IMMUTABLE)
        ),
    ]
