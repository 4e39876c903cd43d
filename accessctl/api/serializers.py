"""DRF serializers of the core domain (parse and format only; rules live in services and models)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework import serializers

from accessctl.models import (
    AccessEvent,
    AccessGroup,
    Alarm,
    Area,
    Door,
    Holiday,
    Person,
    Schedule,
    ScheduleWindow,
    WebhookDelivery,
    WebhookSubscription,
)
from accessctl.offline_marks import OfflineMark, offline_mark
from accessctl.second_factor import person_pin_set
from accessctl.webhook_targets import WebhookTargetRefused, webhook_target_check
from accessctl.webhooks import EVENT_TYPE_CHOICES


class PersonSerializer(serializers.ModelSerializer):
    pin = serializers.RegexField(
        r"^[0-9]{4,12}$",
        write_only=True,
        required=False,
        allow_blank=True,
        help_text="Second-factor PIN (4-12 digits), stored hashed, never returned; empty removes it.",
    )
    has_pin = serializers.SerializerMethodField(help_text="Whether a PIN is set.")

    def get_has_pin(self, person: Person) -> bool:
        return bool(person.pin_hash)

    def create(self, validated_data: dict[str, Any]) -> Person:
        pin = validated_data.pop("pin", None)
        person = super().create(validated_data)
        if pin is not None:
            person_pin_set(person=person, pin=pin)
        return person

    def update(self, instance: Person, validated_data: dict[str, Any]) -> Person:
        pin = validated_data.pop("pin", None)
        person = super().update(instance, validated_data)
        if pin is not None:
            person_pin_set(person=person, pin=pin)
        return person

    class Meta:
        model = Person
        fields = [
            "id",
            "uid",
            "name",
            "external_id",
            "status",
            "kind",
            "valid_from",
            "valid_until",
            "watchlist",
            "notes",
            "card_number",
            "pin",
            "has_pin",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["uid", "created_at", "updated_at"]

    def validate_external_id(self, value: str | None) -> str | None:
        value = (value or "").strip()
        return value or None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        valid_from = attrs.get("valid_from", getattr(self.instance, "valid_from", None))
        valid_until = attrs.get("valid_until", getattr(self.instance, "valid_until", None))
        if valid_from and valid_until and valid_until <= valid_from:
            raise serializers.ValidationError({"valid_until": "Must be later than valid_from."})
        return attrs


class PersonUpsertSerializer(PersonSerializer):
    """Body of ``PUT people/by-external-id/<external_id>/``: the external id comes from the URL."""

    class Meta(PersonSerializer.Meta):
        read_only_fields = [*PersonSerializer.Meta.read_only_fields, "external_id"]


class DoorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Door
        fields = [
            "id",
            "name",
            "location",
            "timezone",
            "mode",
            "fail_mode",
            "relay_pulse_ms",
            "match_threshold",
            "liveness_required",
            "liveness_threshold",
            "held_open_s",
            "cooldown_s",
            "second_factor",
            "second_factor_schedule",
            "created_at",
        ]
        # Lockdown / held-open are audited operator actions (accessctl.doors), not plain edits.
        read_only_fields = ["mode", "created_at"]
        extra_kwargs = {
            "match_threshold": {"min_value": -1.0, "max_value": 1.0},
            "liveness_threshold": {"min_value": 0.0, "max_value": 1.0},
            "relay_pulse_ms": {"min_value": 0, "max_value": 600_000},
            "held_open_s": {"min_value": 0, "max_value": 86_400},
            "cooldown_s": {"min_value": 0, "max_value": 3_600},
        }


class AccessGroupSerializer(serializers.ModelSerializer):
    people = serializers.PrimaryKeyRelatedField(
        many=True, required=False, queryset=Person.objects.all(), help_text="Member person ids."
    )
    doors = serializers.PrimaryKeyRelatedField(
        many=True, required=False, queryset=Door.objects.all(), help_text="Door ids."
    )

    class Meta:
        model = AccessGroup
        fields = ["id", "name", "description", "people", "doors", "schedule"]


class AreaSerializer(serializers.ModelSerializer):
    entry_doors = serializers.PrimaryKeyRelatedField(
        many=True, required=False, queryset=Door.objects.all(), help_text="Door ids that lead into the area."
    )
    exit_doors = serializers.PrimaryKeyRelatedField(
        many=True, required=False, queryset=Door.objects.all(), help_text="Door ids that lead out of it."
    )

    class Meta:
        model = Area
        fields = ["id", "name", "passback", "entry_doors", "exit_doors"]


class AreaResetSerializer(serializers.Serializer):
    person = serializers.PrimaryKeyRelatedField(queryset=Person.objects.all(), help_text="The person's id.")


class ScheduleWindowSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScheduleWindow
        fields = ["weekday", "start", "end"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["end"] <= attrs["start"]:
            raise serializers.ValidationError({"end": "Must be later than start."})
        return attrs


class HolidaySerializer(serializers.ModelSerializer):
    class Meta:
        model = Holiday
        fields = ["date", "name"]


class ScheduleSerializer(serializers.ModelSerializer):
    """A schedule with its weekly windows and holidays; writing replaces both lists when given."""

    windows = ScheduleWindowSerializer(many=True, required=False)
    holidays = HolidaySerializer(many=True, required=False)

    class Meta:
        model = Schedule
        fields = ["id", "name", "description", "windows", "holidays"]

    def validate_holidays(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        dates = [h["date"] for h in value]
        if len(dates) != len(set(dates)):
            raise serializers.ValidationError("Each date may appear only once.")
        return value

    def _replace_children(self, schedule: Schedule, windows: list | None, holidays: list | None) -> None:
        if windows is not None:
            schedule.windows.all().delete()
            ScheduleWindow.objects.bulk_create(ScheduleWindow(schedule=schedule, **w) for w in windows)
        if holidays is not None:
            schedule.holidays.all().delete()
            Holiday.objects.bulk_create(Holiday(schedule=schedule, **h) for h in holidays)

    @transaction.atomic
    def create(self, validated_data: dict[str, Any]) -> Schedule:
        windows = validated_data.pop("windows", [])
        holidays = validated_data.pop("holidays", [])
        schedule = Schedule.objects.create(**validated_data)
        self._replace_children(schedule, windows, holidays)
        return schedule

    @transaction.atomic
    def update(self, instance: Schedule, validated_data: dict[str, Any]) -> Schedule:
        windows = validated_data.pop("windows", None)
        holidays = validated_data.pop("holidays", None)
        instance = super().update(instance, validated_data)
        self._replace_children(instance, windows, holidays)
        return instance


class AccessEventSerializer(serializers.ModelSerializer):
    door_name = serializers.CharField(source="door.name", read_only=True, default=None, allow_null=True)
    person_name = serializers.CharField(source="person.name", read_only=True, default=None, allow_null=True)
    has_snapshot = serializers.SerializerMethodField()
    device = serializers.IntegerField(source="device_id", read_only=True, allow_null=True)
    offline = serializers.SerializerMethodField(
        help_text="A door's own decision (source device_offline): when the server received it against when it "
        "happened, the allow-list version and whether the server agrees now; null for other events."
    )

    class Meta:
        model = AccessEvent
        fields = [
            "id",
            "detection_id",
            "occurred_at",
            "recorded_at",
            "source",
            "door",
            "door_name",
            "device",
            "device_uid",
            "person",
            "person_name",
            "subject_uid",
            "actor",
            "decision",
            "reason",
            "similarity",
            "margin",
            "threshold",
            "model_version",
            "liveness_edge",
            "liveness_frames",
            "liveness_server",
            "liveness_threshold",
            "allowlist_version",
            "probes_fused",
            "offline",
            "has_snapshot",
            "details",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields

    def get_has_snapshot(self, event: AccessEvent) -> bool:
        return bool(event.snapshot)

    def get_offline(self, event: AccessEvent) -> OfflineMark | None:
        return offline_mark(event)


class AlarmSerializer(serializers.ModelSerializer):
    acknowledged = serializers.SerializerMethodField()
    device = serializers.IntegerField(source="device_id", read_only=True, allow_null=True)

    class Meta:
        model = Alarm
        fields = [
            "id",
            "kind",
            "door",
            "device",
            "event",
            "raised_at",
            "last_seen_at",
            "count",
            "details",
            "acknowledged",
            "acknowledged_at",
            "acknowledged_by",
        ]
        read_only_fields = fields

    def get_acknowledged(self, alarm: Alarm) -> bool:
        return alarm.acknowledged_at is not None


class WebhookSubscriptionSerializer(serializers.ModelSerializer):
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
        allow_empty=False,
        max_length=20,
        help_text="Event types to receive; '*' for all.",
    )
    secret = serializers.CharField(
        write_only=True,
        required=False,
        min_length=16,
        max_length=100,
        help_text="HMAC key; generated when omitted. Only returned when created or rotated.",
    )

    class Meta:
        model = WebhookSubscription
        fields = ["id", "name", "url", "event_types", "active", "secret", "created_at"]
        read_only_fields = ["created_at"]

    def validate_event_types(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def validate_url(self, value: str) -> str:
        try:
            webhook_target_check(url=value)
        except WebhookTargetRefused as exc:
            raise serializers.ValidationError(str(exc)) from exc
        return value


class WebhookSubscriptionSecretSerializer(serializers.ModelSerializer):
    """A subscription with its secret: the answer to create and rotate-secret, shown once."""

    event_types = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = WebhookSubscription
        fields = ["id", "name", "url", "event_types", "active", "secret", "created_at"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "delivery_id",
            "subscription",
            "event_type",
            "payload",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields
