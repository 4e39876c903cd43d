# Alarms name their device by uid now (accessctl 0012): filled in for the alarms raised before.

from django.db import migrations

FILL = """
UPDATE accessctl_alarm SET device_uid = d.uid
FROM devices_edgedevice d
WHERE accessctl_alarm.device_id = d.id AND accessctl_alarm.device_uid = ''
"""


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0005_delete_inbounddetection"),
        ("accessctl", "0012_device_references"),
    ]

    operations = [migrations.RunSQL(FILL, reverse_sql=migrations.RunSQL.noop)]
