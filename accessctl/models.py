"""Core domain: people, doors, access groups, schedules and the append-only access log."""

from __future__ import annotations

import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accessctl.codes import DECISION_CHOICES, REASON_CHOICES


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)")


def validate_fail_mode_available(value: str) -> None:
    """Kept for migration 0013, which names it; every fail mode is available now (0017)."""


#: What each fail mode does while a door's devices cannot reach the server (admin, API, OpenAPI).
FAIL_MODE_HELP = (
    "What the door does while its devices cannot reach the server. "
    "secure: stay locked for everyone. "
    "safe: release the lock for everyone until the link returns (for escape routes). "
    "allowlist: the device recognises, by itself, the people allowed at this door from a signed list "
    "the server compiles (people, face templates, schedules, validity; revocations pushed at once), "
    "until the list expires (ACCESSCTL_ALLOWLIST_MAX_AGE, default 24 h); then it stays locked (secure). "
    "Every decision taken offline reaches the access log when the link returns."
)


class Person(models.Model):
    """Someone who may be recognised at a door: an employee, contractor or visitor."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    class Kind(models.TextChoices):
        EMPLOYEE = "employee"
        CONTRACTOR = "contractor"
        VISITOR = "visitor"

    # Pseudonymous identifier kept in audit events; after erasure it no longer maps to anyone.
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    external_id = models.CharField(
        max_length=100, unique=True, null=True, blank=True, help_text="Identifier in the HR system, for sync."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.EMPLOYEE)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    watchlist = models.BooleanField(default=False, help_text="Always denied and raises an alarm when seen.")
    notes = models.TextField(blank=True)
    #: Second factor (doors that require one): the PIN hashed with Django's hashers (never stored or
    #: logged in clear; set through accessctl.second_factor.person_pin_set), and the card number.
    pin_hash = models.CharField(max_length=128, blank=True, default="", db_default="", editable=False)
    card_number = models.CharField(
        max_length=32, null=True, blank=True, unique=True, help_text="Access card number, as the reader gives it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "people"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(valid_from__isnull=True)
                | models.Q(valid_until__isnull=True)
                | models.Q(valid_until__gt=models.F("valid_from")),
                name="person_valid_range",
            )
        ]

    def __str__(self) -> str:
        return self.name


class Schedule(models.Model):
    """Weekly time windows, evaluated in each door's own time zone, with holiday exceptions."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ScheduleWindow(models.Model):
    """One weekly window: ``weekday`` 0=Monday, ``start`` inclusive, ``end`` exclusive."""

    class Weekday(models.IntegerChoices):
        MONDAY = 0
        TUESDAY = 1
        WEDNESDAY = 2
        THURSDAY = 3
        FRIDAY = 4
        SATURDAY = 5
        SUNDAY = 6

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="windows")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    start = models.TimeField()
    end = models.TimeField()

    class Meta:
        ordering = ["schedule", "weekday", "start"]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="window_start_before_end")
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.start:%H:%M}-{self.end:%H:%M}"


class Holiday(models.Model):
    """A date on which a schedule's weekly windows do not apply (closed all day)."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="holidays")
    date = models.DateField()
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["schedule", "date"]
        constraints = [models.UniqueConstraint(fields=["schedule", "date"], name="unique_holiday_per_schedule")]

    def __str__(self) -> str:
        return f"{self.date} {self.name}"


class Door(models.Model):
    """A door with a lock relay, watched by one or more edge devices."""

    class Mode(models.TextChoices):
        NORMAL = "normal"
        LOCKDOWN = "lockdown", "locked down"
        HELD_OPEN = "held_open", "held open"

    class FailMode(models.TextChoices):
        SECURE = "secure", "fail secure (stay locked when offline)"
        SAFE = "safe", "fail safe (release when offline)"
        ALLOWLIST = "allowlist", "offline allow-list (recognise allowed people alone; locked once it expires)"

    name = models.CharField(max_length=100, unique=True)
    location = models.CharField(max_length=200, blank=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.NORMAL)
    fail_mode = models.CharField(
        max_length=16, choices=FailMode.choices, default=FailMode.SECURE, help_text=FAIL_MODE_HELP
    )
    relay_pulse_ms = models.PositiveIntegerField(default=3000)
    match_threshold = models.FloatField(
        null=True, blank=True, help_text="Cosine-similarity threshold override; empty uses the calibrated value."
    )
    liveness_required = models.BooleanField(
        default=False,
        db_default=False,  # rows inserted by code that predates the column (a rolling upgrade) are off
        help_text="Deny faces the device did not score as live (presentation attacks, and detections without a score).",
    )
    liveness_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Live-score threshold (0..1) override; empty uses the site's calibrated value.",
    )
    held_open_s = models.PositiveIntegerField(
        default=30,
        db_default=30,
        help_text="Seconds the door may stay open after a grant or an exit request before the held-open alarm "
        "(door position sensor); 0: never.",
    )

    class SecondFactor(models.TextChoices):
        OFF = "off", "off (face alone)"
        REQUIRED = "required", "required (face and PIN or card)"
        OUTSIDE_SCHEDULE = "outside_schedule", "required outside the second-factor schedule"

    second_factor = models.CharField(
        max_length=16, choices=SecondFactor.choices, default=SecondFactor.OFF, db_default=SecondFactor.OFF
    )
    second_factor_schedule = models.ForeignKey(
        "Schedule",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="With 'required outside the schedule': when the face alone suffices (empty: never).",
    )
    cooldown_s = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="Seconds after a decision for a person at this door during which that person's further "
        "detections here are recorded as suppressed repeats, not decided again; 0: off.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(liveness_threshold__isnull=True)
                | models.Q(liveness_threshold__gte=0.0, liveness_threshold__lte=1.0),
                name="door_liveness_threshold_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AccessGroup(models.Model):
    """Grants its members access to its doors during its schedule (no schedule: always)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    people = models.ManyToManyField(Person, related_name="access_groups", blank=True)
    doors = models.ManyToManyField(Door, related_name="access_groups", blank=True)
    schedule = models.ForeignKey(
        Schedule, null=True, blank=True, on_delete=models.PROTECT, help_text="Empty means at any time."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AccessEvent(models.Model):
    """One decision at a door. Append-only: a database trigger refuses updates and deletes.

    Every detection ends in exactly one event (``detection_id`` is unique), rejected messages
    included. ``prev_hash``/``hash`` chain the events for tamper evidence. The person is kept as
    a foreign key for convenience and as ``subject_uid`` (pseudonymous) for the chain; erasing a
    person removes the key and the name, the pseudonym stays.
    """

    class Source(models.TextChoices):
        DETECTION = "detection"
        OPERATOR = "operator"
        DEVICE_OFFLINE = "device_offline", "device (offline)"
        SYSTEM = "system"
        DOOR = "door", "door inputs (position sensor, exit button)"

    detection_id = models.UUIDField(unique=True, default=uuid.uuid4)
    occurred_at = models.DateTimeField(db_index=True)
    recorded_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.DETECTION)
    door = models.ForeignKey(Door, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    #: The device's registry id when the device was known (no foreign key: the domain does not know
    #: the device registry; ``device_uid`` names the device).
    device_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    device_uid = models.CharField(max_length=64, blank=True, help_text="As claimed by the message, even if unknown.")
    person = models.ForeignKey(Person, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    subject_uid = models.UUIDField(null=True, blank=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision = models.CharField(max_length=8, choices=DECISION_CHOICES)
    reason = models.CharField(max_length=32, choices=REASON_CHOICES, db_index=True)
    similarity = models.FloatField(null=True, blank=True)
    margin = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    #: Liveness (presentation-attack detection), all null when not measured: the device's live score
    #: fused over the track and its number of frames (the decision uses these), the server's own
    #: score of the received crop (crop mode; informational), and the threshold the door applied.
    liveness_edge = models.FloatField(null=True, blank=True, help_text="The device's fused live score (0..1).")
    liveness_frames = models.IntegerField(null=True, blank=True, help_text="Frames the device's score is fused over.")
    liveness_server = models.FloatField(
        null=True, blank=True, help_text="The server's live score of the received crop (informational)."
    )
    liveness_threshold = models.FloatField(null=True, blank=True, help_text="The live-score threshold applied.")
    #: A decision the device took alone (source ``device_offline``) with its offline allow-list:
    #: the version it decided with (null for every other event).
    allowlist_version = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Offline allow-list version the device decided with."
    )
    #: Faces of the track the match fused (the detection's main one plus its track probes; 1: one
    #: frame); null when no face was matched (a rejected message, an unusable probe, older events).
    probes_fused = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Faces of the track fused into the match (1: one frame)."
    )
    snapshot = models.CharField(max_length=300, blank=True, help_text="Storage name of the face crop, if kept.")
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [models.Index(fields=["door", "-occurred_at"]), models.Index(fields=["person", "-occurred_at"])]
        permissions = [
            ("view_dashboard", "Can watch the live dashboard"),
            ("operate_doors", "Can unlock doors and trigger lockdown"),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.decision} {self.reason}"


class Alarm(models.Model):
    """Something an operator must look at: raised by services, acknowledged on the dashboard."""

    class Kind(models.TextChoices):
        REPEATED_UNKNOWN = "repeated_unknown", "repeated unknown faces"
        WATCHLIST = "watchlist", "watchlist person seen"
        FORGED_SIGNATURE = "forged_signature", "forged or invalid signature"
        DEVICE_OFFLINE = "device_offline", "device offline"
        REPLAY = "replay", "replayed message"
        BRIDGE_DEAF = "bridge_deaf", "MQTT bridge stopped receiving"
        DEVICE_DEGRADED = "device_degraded", "device gets no answers"
        PRESENTATION_ATTACK = "presentation_attack", "presentation attack (photo or screen)"
        REPEATED_ATTACK = "repeated_attack", "repeated presentation attacks"
        OFFLINE_DISAGREEMENT = "offline_disagreement", "offline grant the server would deny"
        RECOGNITION_DRIFT = "recognition_drift", "recognition drifted from the door's baseline"
        FORCED_OPEN = "forced_open", "door forced open"
        HELD_OPEN = "held_open", "door held open"
        ANTI_PASSBACK = "anti_passback", "anti-passback violation (entered again without leaving)"
        SECOND_FACTOR_MISMATCH = "second_factor_mismatch", "repeated wrong PIN or card"

    #: Alarms about a door's position: cleared (``cleared_at``) when the door closes.
    DOOR_POSITION_KINDS = (Kind.FORCED_OPEN, Kind.HELD_OPEN)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    door = models.ForeignKey(Door, null=True, blank=True, on_delete=models.CASCADE, related_name="alarms")
    #: The device it is about, if any: registry id and uid (no foreign key, as on the access log).
    device_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    device_uid = models.CharField(max_length=64, blank=True)
    event = models.ForeignKey(AccessEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    raised_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_seen_at = models.DateTimeField(auto_now_add=True)
    count = models.PositiveIntegerField(default=1, help_text="Occurrences folded into this alarm while open.")
    details = models.JSONField(default=dict, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    #: The condition ended by itself (a forced or held-open door closed); the alarm still waits for
    #: an operator's acknowledgement, and a new occurrence opens a new alarm.
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        indexes = [models.Index(fields=["acknowledged_at", "kind"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.raised_at:%Y-%m-%d %H:%M})"


class Area(models.Model):
    """A space entered through its entry doors and left through its exit doors, with anti-passback:
    a person who entered must leave before entering again (``hard``: denied ``anti_passback``;
    ``soft``: granted, and the ``anti_passback`` alarm). See :mod:`accessctl.passback`."""

    class Passback(models.TextChoices):
        OFF = "off", "off"
        SOFT = "soft", "soft (grant and raise an alarm)"
        HARD = "hard", "hard (deny)"

    name = models.CharField(max_length=100, unique=True)
    entry_doors = models.ManyToManyField(Door, related_name="entry_areas", blank=True)
    exit_doors = models.ManyToManyField(Door, related_name="exit_areas", blank=True)
    passback = models.CharField(max_length=8, choices=Passback.choices, default=Passback.HARD)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AreaPresence(models.Model):
    """Whether a person is inside an area, as the grants at its doors say (or an operator reset it)."""

    area = models.ForeignKey(Area, on_delete=models.CASCADE, related_name="presences")
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="area_presences")
    inside = models.BooleanField(default=False)
    changed_at = models.DateTimeField()
    event = models.ForeignKey(AccessEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["area", "person"]
        constraints = [models.UniqueConstraint(fields=["area", "person"], name="unique_presence_per_area")]

    def __str__(self) -> str:
        return f"{self.person_id} {'in' if self.inside else 'out of'} {self.area_id}"


class DoorPosition(models.Model):
    """What a door's position sensor last said, kept by :mod:`accessctl.door_sensors`.

    ``opened_at``/``opening_event``: the current opening (while ``is_open``); ``authorised``:
    it followed a grant or an exit request (only those can be held open; an unauthorised one
    is forced); ``held_alarmed``: the held-open alarm was raised for it.
    """

    door = models.OneToOneField(Door, primary_key=True, on_delete=models.CASCADE, related_name="position")
    is_open = models.BooleanField(default=False)
    opened_at = models.DateTimeField(null=True, blank=True)
    opening_event = models.ForeignKey(AccessEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    authorised = models.BooleanField(default=False)
    held_alarmed = models.BooleanField(default=False)
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["is_open", "held_alarmed"])]

    def __str__(self) -> str:
        return f"{self.door_id}: {'open' if self.is_open else 'closed'}"


class ApiToken(models.Model):
    """A bearer token for integrators. Only a SHA-256 of the secret is stored; scopes limit what it may do."""

    class Scope(models.TextChoices):
        EVENTS_READ = "events:read", "read access events"
        PEOPLE_READ = "people:read", "read people"
        PEOPLE_WRITE = "people:write", "manage people and enrolment"
        DOORS_READ = "doors:read", "read doors, groups, schedules"
        DOORS_WRITE = "doors:write", "manage doors, groups, schedules"
        DEVICES_READ = "devices:read", "read devices"
        DEVICES_WRITE = "devices:write", "manage devices"
        IDENTIFY = "identify", "identify faces in images"
        WEBHOOKS_WRITE = "webhooks:write", "manage webhook subscriptions"
        MODELS_READ = "models:read", "read the model registry and shadow figures"
        MODELS_WRITE = "models:write", "move model versions between states"

    name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=12, unique=True, help_text="Public part shown in lists and logs.")
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    rate_limit_per_minute = models.PositiveIntegerField(default=600)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    issued_by = models.CharField(
        max_length=150, blank=True, default="", help_text="Who issued it: a username, or the command line."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class WebhookSubscription(models.Model):
    """An integrator's endpoint that receives signed event notifications."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, help_text="HMAC-SHA256 key for the X-Accessctl-Signature header.")
    event_types = models.JSONField(default=list, help_text="e.g. access.granted, access.denied, alarm.raised")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """One attempt history of delivering one event to one subscription."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    delivery_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=50)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} -> {self.subscription_id} ({self.status})"
