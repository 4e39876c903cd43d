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
