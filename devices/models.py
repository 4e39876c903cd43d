"""Edge devices: identity (Ed25519 public key), door assignment and fleet health."""

from __future__ import annotations

from django.db import models


class EdgeDevice(models.Model):
    """A door device running ``edge_agent``. The server holds only its public key."""

    class Status(models.TextChoices):
        PROVISIONED = "provisioned"
        ONLINE = "online"
        OFFLINE = "offline"
        #: heartbeats arrive, but the answers to its detections do not (see devices.health)
        DEGRADED = "degraded"
        DISABLED = "disabled"

    uid = models.SlugField(max_length=64, unique=True, help_text="Device id used in MQTT topics.")
    name = models.CharField(max_length=100, blank=True)
    door = models.ForeignKey("accessctl.Door", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices")
    public_key = models.CharField(max_length=100, help_text="Ed25519 public key, base64 (raw 32 bytes).")
    mqtt_password_hash = models.CharField(
        max_length=200, blank=True, help_text="Broker password, Mosquitto $7$ hash (devices.broker_auth)."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROVISIONED)
    last_seen = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="Settings pushed to the agent.")
    last_heartbeat = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["uid"]

    def __str__(self) -> str:
        return self.name or self.uid


class InboundDetection(models.Model):
    """A verified detection waiting for its decision (the durable hand-off from bridge to worker).

    The bridge inserts it (unique ``detection_id``: a transport duplicate is dropped here) and
    enqueues the recognition task with only the id. The decision deletes it in the same
    transaction that records the AccessEvent, so a row that lingers means a lost or failed task;
    a periodic sweep re-enqueues those. The crop is in storage (``crop``), never in the database.
    """

    detection_id = models.UUIDField(unique=True)
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    payload = models.JSONField(help_text="Verified detection payload without the crop bytes.")
    crop = models.CharField(max_length=300, blank=True, help_text="Storage name of the face crop (crop mode).")
    enqueued = models.PositiveSmallIntegerField(default=1, help_text="How many times the task was enqueued.")

    class Meta:
        ordering = ["received_at", "id"]

    def __str__(self) -> str:
        return str(self.detection_id)
