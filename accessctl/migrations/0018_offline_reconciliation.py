"""Offline decisions reconciled on the server: the allow-list version on the access event and the
``offline_disagreement`` alarm.

The new event column is immutable like the others: the append-only trigger (last replaced by
0015) is replaced by one that also refuses updates of it. The hash chain covers it only when it
is set (``accessctl.audit.event_hash``), so events recorded before, all null there, keep their
hashes. The application role's grants (``dbroles``) give no UPDATE on it.

Depends on 0017 (fail mode allowlist), which follows 0016 (the ``offline_*`` reasons).
"""

from django.db import migrations, models

_BEFORE = (
    "id, detection_id, occurred_at, recorded_at, source, door_id, device_id, device_uid, subject_uid, decision, "
    "reason, similarity, margin, threshold, model_version, details, prev_hash, hash, "
    "liveness_edge, liveness_frames, liveness_server, liveness_threshold"
)
_AFTER = f"{_BEFORE}, allowlist_version"


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
        ("accessctl", "0017_door_fail_mode_allowlist"),
    ]

    operations = [
        migrations.AddField(
            model_name="accessevent",
            name="allowlist_version",
            field=models.PositiveBigIntegerField(
                blank=True, help_text="Offline allow-list version the device decided with.", null=True
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
                    ("offline_disagreement", "offline grant the server would deny"),
                ],
                max_length=32,
            ),
        ),
        migrations.RunSQL(sql=_trigger_function(_AFTER), reverse_sql=_trigger_function(_BEFORE)),
    ]
