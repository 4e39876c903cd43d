"""Access events and alarms name their device by registry id and uid, without a foreign key.

The domain does not know the device registry (the devices app imports the domain, not the other
way round). Databases made before this kept ``device_id`` as a foreign key to
``devices_edgedevice``: the constraint is dropped here, the column and its index stay (the hash
chain covers ``device_uid``, not the id, so existing chains still verify). Alarms get the
device's uid; the devices app's migration 0006 fills it in for existing alarms.
"""

from django.db import migrations, models

DROP_DEVICE_FOREIGN_KEYS = """
DO $$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT c.conname, c.conrelid::regclass AS tbl
        FROM pg_constraint c JOIN pg_class target ON target.oid = c.confrelid
        WHERE c.contype = 'f' AND target.relname = 'devices_edgedevice'
          AND c.conrelid IN ('accessctl_accessevent'::regclass, 'accessctl_alarm'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', found.tbl, found.conname);
    END LOOP;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accessctl", "0011_enrolment_review_reason_codes"),
    ]

    operations = [
        migrations.RunSQL(DROP_DEVICE_FOREIGN_KEYS, reverse_sql=migrations.RunSQL.noop),
        migrations.AddField(
            model_name="alarm",
            name="device_uid",
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
