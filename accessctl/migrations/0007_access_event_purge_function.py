"""Retention purges of the access log go through one function owned by the schema owner.

The application's role may only read and append to the access log (plus the three privacy updates
the trigger of 0003 allows; see accessctl/dbroles.py for the grants). Deleting old events is done by
``accessctl_events_purge(record_id)``, ``SECURITY DEFINER`` (it runs with its owner's rights) and
enforcing the retention rules itself, whatever its caller claims:

* the caller has just appended a system event recording the purge (source ``system``, reason
  ``retention_purge``, details ``action``/``purged_through_id``/``purged_last_hash``/``purged_events``),
  and it is still the newest event (the chain lock is held until the caller commits);
* what goes is a prefix of the log: every event up to ``purged_through_id``, and exactly as many as
  the record says, the last of them with the hash it names;
* every one of them is older than the retention period the owner configured
  (``accessctl_event_retention``, written at each ``migrate`` from ``ACCESSCTL_RETAIN_EVENTS_DAYS``;
  NULL keeps events forever), measured from the database's clock.
"""

from django.db import migrations

FORWARD = """
CREATE TABLE accessctl_event_retention (
    id integer PRIMARY KEY CHECK (id = 1),
    retain_days integer CHECK (retain_days IS NULL OR retain_days >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accessctl_event_retention (id, retain_days) VALUES (1, NULL);

CREATE FUNCTION accessctl_events_purge(record_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    rec accessctl_accessevent%ROWTYPE;
    through_id bigint;
    expected bigint;
    days integer;
    cutoff timestamptz;
    last_hash text;
    purged bigint;
BEGIN
    SELECT * INTO rec FROM accessctl_accessevent WHERE id = record_id;
    IF NOT FOUND OR rec.source <> 'system' OR rec.reason <> 'retention_purge'
       OR coalesce(rec.details->>'action', '') <> 'retention_purge' THEN
        RAISE EXCEPTION 'event purge refused: event % is not a retention purge record', record_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM accessctl_accessevent WHERE id > record_id) THEN
        RAISE EXCEPTION 'event purge refused: the purge record % is not the newest event', record_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT retain_days INTO days FROM accessctl_event_retention WHERE id = 1;
    IF days IS NULL THEN
        RAISE EXCEPTION 'event purge refused: access events are kept forever'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    cutoff := now() - make_interval(days => days);
    through_id := (rec.details->>'purged_through_id')::bigint;
    expected := (rec.details->>'purged_events')::bigint;
    IF through_id IS NULL OR expected IS NULL OR through_id >= record_id THEN
        RAISE EXCEPTION 'event purge refused: record % names no range before itself', record_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM accessctl_accessevent WHERE id <= through_id AND occurred_at >= cutoff) THEN
        RAISE EXCEPTION 'event purge refused: events up to % include some younger than % days', through_id, days
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT hash INTO last_hash FROM accessctl_accessevent WHERE id = through_id;
    IF NOT FOUND OR last_hash IS DISTINCT FROM rec.details->>'purged_last_hash' THEN
        RAISE EXCEPTION 'event purge refused: event % is not the one record % names', through_id, record_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The append-only trigger lets deletes through only with this set (for this statement only).
    PERFORM set_config('accessctl.allow_event_purge', 'on', true);
    DELETE FROM accessctl_accessevent WHERE id <= through_id;
    GET DIAGNOSTICS purged = ROW_COUNT;
    PERFORM set_config('accessctl.allow_event_purge', '', true);
    IF purged <> expected THEN
        RAISE EXCEPTION 'event purge refused: % events up to %, the record says %', purged, through_id, expected
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN purged;
END;
$$;
REVOKE ALL ON FUNCTION accessctl_events_purge(bigint) FROM PUBLIC;
"""

REVERSE = """
DROP FUNCTION IF EXISTS accessctl_events_purge(bigint);
DROP TABLE IF EXISTS accessctl_event_retention;
"""


class Migration(migrations.Migration):
    dependencies = [("accessctl", "0006_system_reason_codes")]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=REVERSE)]
