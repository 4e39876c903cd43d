# Staging moved to recognition (recognition.InboundDetection): what is staged here is copied there
# (device uid and door instead of the device row), then this table goes.

from django.db import migrations

COPY = """
INSERT INTO recognition_inbounddetection
    (detection_id, device_uid, device_id, door_id, received_at, payload, crop, enqueued)
SELECT i.detection_id, d.uid, d.id, d.door_id, i.received_at, i.payload, i.crop, i.enqueued
FROM devices_inbounddetection i JOIN devices_edgedevice d ON d.id = i.device_id
ON CONFLICT (detection_id) DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0004_edgedevice_mqtt_password_hash"),
        ("recognition", "0006_inbounddetection"),
    ]

    operations = [
        migrations.RunSQL(COPY, reverse_sql=migrations.RunSQL.noop),
        migrations.DeleteModel(name="InboundDetection"),
    ]
