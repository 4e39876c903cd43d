"""Edge devices: identity (Ed25519 public key), door assignment and fleet health."""

from __future__ import annotations

from django.conf import settings
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


class DeviceAllowlist(models.Model):
    """The offline allow-list of one device (``devices.allowlist``): the latest version issued and
    what the device acknowledged in its heartbeats. One row per device, created on first compile."""

    device = models.OneToOneField(EdgeDevice, on_delete=models.CASCADE, related_name="allowlist")
    version = models.PositiveIntegerField(default=0, help_text="Latest version issued (monotonic per device).")
    base_version = models.PositiveIntegerField(null=True, blank=True, help_text="Its base when sent as a delta.")
    issued_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    entry_count = models.PositiveIntegerField(default=0)
    bytes = models.PositiveIntegerField(default=0, help_text="Bytes of the chunks' data sent for the version.")
    full_bytes = models.PositiveIntegerField(default=0, help_text="Bytes of the whole list (as a full version).")
    chunk_count = models.PositiveIntegerField(default=0)
    #: ref -> digest of the entry in the latest version (deltas are built from these)
    digests = models.JSONField(default=dict, blank=True)
    #: refs dropped from a version the device has not acknowledged yet: it may still hold them
    pending_refs = models.JSONField(default=list, blank=True)
    #: the matching rule and windows of the latest version (to tell whether a recompile changed anything)
    rules = models.JSONField(default=dict, blank=True)
    windows = models.JSONField(default=dict, blank=True)
    revocation_seq = models.PositiveIntegerField(default=0, help_text="Revocations the latest version reflects.")
    refused = models.CharField(max_length=300, blank=True, help_text="Why no list is issued (the door stays secure).")
    push_error = models.CharField(max_length=300, blank=True)
    pushed_at = models.DateTimeField(null=True, blank=True)
    resync_full = models.BooleanField(default=False, help_text="The device restarted: a full list on a mismatch.")
    acked_version = models.PositiveIntegerField(null=True, blank=True)
    acked_revocation_seq = models.PositiveIntegerField(null=True, blank=True)
    acked_offline_mode = models.CharField(max_length=16, blank=True)
    acked_expires_at = models.DateTimeField(null=True, blank=True)
    acked_entries = models.PositiveIntegerField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "device allow-list"

    def __str__(self) -> str:
        return f"allow-list v{self.version} of {self.device_id}"


class DeviceRevocation(models.Model):
    """People revoked on one device (a ``revoke`` command, ``seq`` per device), and when the device
    acknowledged it (its heartbeat's ``revocation_seq`` reached ``seq``)."""

    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="revocations")
    seq = models.PositiveIntegerField()
    refs = models.JSONField(default=list)
    reason = models.CharField(max_length=32)
    command_id = models.CharField(max_length=64, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    send_error = models.CharField(max_length=300, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["device", "seq"]
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="unique_revocation_seq_per_device")]
        indexes = [models.Index(fields=["acknowledged_at", "device"])]

    def __str__(self) -> str:
        return f"revocation {self.seq} on {self.device_id}"


class ModelRollout(models.Model):
    """A model version offered to devices in embedding mode (``devices.model_rollout``): at some
    doors, to named devices, or as a percentage canary; one :class:`ModelRolloutDevice` per device."""

    class State(models.TextChoices):
        RUNNING = "running"
        PAUSED = "paused"
        ROLLED_BACK = "rolled_back"
        DONE = "done"

    model_version = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    #: what was asked: {"doors": [ids], "devices": [uids], "percent": n or null}
    scope = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_name = models.CharField(max_length=150, blank=True)
    #: every action on the rollout: [{"at", "action", "actor"}]
    history = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.model_version} ({self.state})"


class ModelRolloutDevice(models.Model):
    """One device of a rollout: where it is with the offer (the device reports it in heartbeats)."""

    class Status(models.TextChoices):
        OFFERED = "offered"
        DOWNLOADING = "downloading"
        VERIFIED = "verified"
        SWITCHED = "switched"
        FAILED = "failed"
        ROLLED_BACK = "rolled_back"

    rollout = models.ForeignKey(ModelRollout, on_delete=models.CASCADE, related_name="targets")
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="model_rollouts")
    previous_model_version = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFERED)
    reason = models.CharField(max_length=64, blank=True, help_text="Why it failed or rolled back (a code).")
    command_id = models.CharField(max_length=64, blank=True)
    send_error = models.CharField(max_length=300, blank=True)
    offered_at = models.DateTimeField(null=True, blank=True)
    download_started_at = models.DateTimeField(null=True, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)
    rollback_sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rollout", "device__uid"]
        constraints = [models.UniqueConstraint(fields=["rollout", "device"], name="unique_rollout_device")]

    def __str__(self) -> str:
        return f"{self.device_id} in rollout {self.rollout_id}: {self.status}"
