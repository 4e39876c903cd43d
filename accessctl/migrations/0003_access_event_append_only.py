"""Make the access log append-only in the database itself.

Deletes are refused unless the retention service sets ``accessctl.allow_event_purge`` for its
transaction. Updates are refused except the two that privacy requires: dropping the link to an
erased person (``person_id`` to NULL; the pseudonymous ``subject_uid`` and hash stay) and
removing an expired snapshot reference (``snapshot`` to ''), plus ``actor_id`` to NULL when a
user account is deleted. The hash chain does not cover those three columns.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION accessctl_event_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF coalesce(current_setting('accessctl.allow_event_purge', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'access events are append-only: delete of event % refused', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.id, NEW.detection_id, NEW.occurred_at, NEW.recorded_at, NEW.source, NEW.door_id,
        NEW.device_id, NEW.device_uid, NEW.subject_uid, NEW.decision, NEW.reason, NEW.similarity,
        NEW.margin, NEW.threshold, NEW.model_version, NEW.details, NEW.prev_hash, NEW.hash)
       IS DISTINCT FROM
       (OLD.id, OLD.detection_id, OLD.occurred_at, OLD.recorded_at, OLD.source, OLD.door_id,
        OLD.device_id, OLD.device_uid, OLD.subject_uid, OLD.decision, OLD.reason, OLD.similarity,
        OLD.margin, OLD.threshold, OLD.model_version, OLD.details, OLD.prev_hash, OLD.hash)
       OR (NEW.person_id IS NOT NULL AND NEW.person_id IS DISTINCT FROM OLD.person_id)
       OR (NEW.actor_id IS NOT NULL AND NEW.actor_id IS DISTINCT FROM OLD.actor_id)
       OR (NEW.snapshot <> '' AND NEW.snapshot IS DISTINCT FROM OLD.snapshot) THEN
        RAISE EXCEPTION 'access events are append-only: update of event % refused', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER accessctl_event_append_only
    BEFORE UPDATE OR DELETE ON accessctl_accessevent
    FOR EACH ROW EXECUTE FUNCTION accessctl_event_append_only();
"""

REVERSE = """
DROP TRIGGER IF EXISTS accessctl_event_append_only ON accessctl_accessevent;
DROP FUNCTION IF EXISTS accessctl_event_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("accessctl", "0002_initial")]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=REVERSE)]
