"""Signed webhooks: fan an event out to matching subscriptions and deliver it (see ``accessctl.tasks``).

Each delivery is a POST of a JSON body::

    {"id": "<delivery uuid>", "type": "access.granted", "created_at": "<ISO 8601>", "data": {...}}

with the headers

* ``X-Accessctl-Event``: the event type;
* ``X-Accessctl-Delivery``: the delivery uuid, the same on every retry (deduplicate on it);
* ``X-Accessctl-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>``.

A 2xx answer is success; anything else (or no answer within the timeout) is retried with
exponential backoff and jitter, then the delivery is marked failed. Redirects are not followed, and
only public addresses are called unless allow-listed (``accessctl.webhook_targets``).
Integrators check the signature with :func:`verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import ssl
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accessctl.models import WebhookDelivery, WebhookSubscription
from accessctl.process_cache import ProcessCache
from accessctl.webhook_targets import WebhookTargetRefused, WebhookTargetUnresolved, webhook_target_resolve

if TYPE_CHECKING:
    from accessctl.models import AccessEvent, Alarm, Person

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Accessctl-Signature"
DELIVERY_HEADER = "X-Accessctl-Delivery"
EVENT_HEADER = "X-Accessctl-Event"
USER_AGENT = "accessctl-webhooks/1"
DEFAULT_TIMEOUT_S = 10.0
WILDCARD = "*"


class EventType(StrEnum):
    ACCESS_GRANTED = "access.granted"
    ACCESS_DENIED = "access.denied"
    ALARM_RAISED = "alarm.raised"
    PERSON_CREATED = "person.created"
    PERSON_UPDATED = "person.updated"
    PERSON_DELETED = "person.deleted"


EVENT_TYPE_CHOICES = [(t.value, t.value) for t in EventType] + [(WILDCARD, "every event type")]


class WebhookDeliveryFailed(Exception):
    """A delivery attempt failed and should be retried (raised to Celery's ``autoretry_for``)."""


# --- signing -----------------------------------------------------------------------------------


def webhook_secret_generate() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def webhook_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Accessctl-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str, header: str, body: bytes | str, tolerance_s: int = 300, *, now: float | None = None
) -> bool:
    """Check an ``X-Accessctl-Signature`` header, for integrators receiving accessctl webhooks.

    ``header`` is the header value (``t=<unix>,v1=<hex>``; several ``v1`` entries are accepted,
    e.g. while a secret is rotated), ``body`` the raw request body exactly as received (bytes, or
    str encoded as UTF-8) and ``tolerance_s`` the largest accepted age (or clock skew) in seconds,
    which bounds replays. Returns True when one ``v1`` equals the HMAC-SHA256 of
    ``f"{t}.{body}"`` under ``secret``. Stdlib only, so it can be copied into a receiver::

        ok = verify_signature(secret, request.headers["X-Accessctl-Signature"], request.body)

    Deduplicate deliveries on the ``X-Accessctl-Delivery`` header: a retry carries the same id.
    """
    if isinstance(body, str):
        body = body.encode()
    timestamp: int | None = None
    candidates: list[str] = []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = webhook_signature(secret, body, timestamp).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


# --- dispatch ----------------------------------------------------------------------------------


def webhook_body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes sent (and signed) for ``delivery``: identical on every retry."""
    envelope = {
        "id": str(delivery.delivery_id),
        "type": delivery.event_type,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _enqueue(delivery_pk: int) -> None:
    from accessctl.tasks import webhook_deliver

    try:
        webhook_deliver.delay(delivery_pk)
    except Exception:
        # The row stays pending; it can be re-sent from the admin.
        logger.exception("could not enqueue webhook delivery %s", delivery_pk)


#: Read on every door decision (see accessctl.process_cache).
SUBSCRIPTIONS = ProcessCache("webhook-subscriptions", ttl_s=5.0, cleared_by=(WebhookSubscription,))


def _active_subscriptions() -> list[tuple[int, frozenset[str]]]:
    """``(id, event types)`` of the active subscriptions."""

    def load() -> list[tuple[int, frozenset[str]]]:
        rows = WebhookSubscription.objects.filter(active=True).values_list("pk", "event_types")
        return [(pk, frozenset(types or ())) for pk, types in rows]

    return SUBSCRIPTIONS.get(None, load)


def webhook_dispatch(event_type: str, payload: dict[str, Any]) -> list[WebhookDelivery]:
    """Record one delivery per active subscription to ``event_type`` and send them after commit.

    ``payload`` must be JSON-serialisable (ids, codes, ISO timestamps; never images or
    embeddings). Call it inside the transaction that made the change: nothing is sent if it
    rolls back.
    """
    event_type = str(event_type)
    wanted = [pk for pk, types in _active_subscriptions() if event_type in types or WILDCARD in types]
    if not wanted:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(subscription_id=pk, event_type=event_type, payload=payload) for pk in wanted]
    )
    for delivery in deliveries:
        transaction.on_commit(lambda pk=delivery.pk: _enqueue(pk))
    logger.info("webhook %s: %d deliveries queued", event_type, len(deliveries))
    return deliveries


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again (e.g. after it failed): back to pending, enqueued after commit."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.PENDING)
    delivery.status = WebhookDelivery.Status.PENDING
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def access_event_webhook_payload(event: AccessEvent) -> dict[str, Any]:
    return {
        "event_id": event.pk,
        "detection_id": str(event.detection_id),
        "occurred_at": event.occurred_at.isoformat(),
        "door_id": event.door_id,
        "device_uid": event.device_uid,
        "person_id": event.person_id,
        "subject_uid": str(event.subject_uid) if event.subject_uid else None,
        "decision": event.decision,
        "reason": event.reason,
        "similarity": event.similarity,
        "margin": event.margin,
        "model_version": event.model_version,
    }


def webhook_dispatch_access_event(event: AccessEvent) -> list[WebhookDelivery]:
    """``access.granted`` / ``access.denied`` for a recorded event (call from the deciding service)."""
    event_type = EventType.ACCESS_GRANTED if event.decision == "grant" else EventType.ACCESS_DENIED
    return webhook_dispatch(event_type, access_event_webhook_payload(event))


def webhook_dispatch_alarm(alarm: Alarm) -> list[WebhookDelivery]:
    return webhook_dispatch(
        EventType.ALARM_RAISED,
        {
            "alarm_id": alarm.pk,
            "kind": alarm.kind,
            "door_id": alarm.door_id,
            "device_id": alarm.device_id,
            "event_id": alarm.event_id,
            "raised_at": alarm.raised_at.isoformat() if alarm.raised_at else None,
            "count": alarm.count,
        },
    )


def person_webhook_payload(person: Person) -> dict[str, Any]:
    return {
        "person_id": person.pk,
        "uid": str(person.uid),
        "external_id": person.external_id,
        "name": person.name,
        "status": person.status,
        "kind": person.kind,
        "valid_from": person.valid_from.isoformat() if person.valid_from else None,
        "valid_until": person.valid_until.isoformat() if person.valid_until else None,
    }


# --- delivery ----------------------------------------------------------------------------------


def _connect_to(address: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the literal ``address`` (no name resolution at all)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand, whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = _connect_to(self._address, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is still verified against the URL's host name."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = _connect_to(self._address, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """POST to a checked address of ``url``; returns ``(status code or None, error text)``.

    Raises :class:`WebhookTargetRefused` when the URL may not receive webhooks (see
    ``accessctl.webhook_targets``). Redirects are answers like any other non-2xx: not followed.
    """
    try:
        target = webhook_target_resolve(url=url)
    except WebhookTargetUnresolved as exc:
        return None, str(exc)[:500]
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    error = "no address"
    for address in target.addresses:
        connection = connection_class(target.host, target.port, address=address, timeout=timeout_s)
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(1024)
            status = response.status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc} (connecting to {address})"[:500]
            if connection.sock is None:
                continue  # could not connect: try the host's next address
            return None, error  # connected, so the body may have arrived: retried later, never twice now
        finally:
            connection.close()
        return status, "" if 200 <= status < 300 else f"HTTP {status}"
    return None, error


def webhook_delivery_attempt(*, delivery_id: int, final: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Try to deliver once; record the attempt. Returns ``succeeded``, ``failed`` or a skip reason.

    Idempotent: a delivery that already succeeded (or was given up) is not sent again. When the
    attempt fails and ``final`` is false, raises :class:`WebhookDeliveryFailed` so the task retries.
    """
    delivery = WebhookDelivery.objects.select_related("subscription").filter(pk=delivery_id).first()
    if delivery is None:
        logger.warning("webhook delivery %s does not exist", delivery_id)
        return "missing"
    if delivery.status != WebhookDelivery.Status.PENDING:
        logger.info("webhook delivery %s already %s; not sent again", delivery.delivery_id, delivery.status)
        return f"already_{delivery.status}"
    subscription = delivery.subscription
    if not subscription.active:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.FAILED, last_error="subscription inactive"
        )
        return "failed"
    body = webhook_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: delivery.event_type,
        DELIVERY_HEADER: str(delivery.delivery_id),
        SIGNATURE_HEADER: webhook_signature(subscription.secret, body, int(time.time())),
    }
    try:
        status_code, error = _post(subscription.url, body, headers, timeout_s)
    except WebhookTargetRefused as exc:
        # Not a passing fault: retrying cannot help, and the target must not be tried again.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.FAILED, attempts=F("attempts") + 1, last_error=f"refused: {exc}"[:500]
        )
        logger.warning("webhook delivery %s to subscription %s refused: %s", delivery.delivery_id, subscription.pk, exc)
        return "refused"
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        new_status = WebhookDelivery.Status.SUCCEEDED
    else:
        new_status = WebhookDelivery.Status.FAILED if final else WebhookDelivery.Status.PENDING
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=new_status,
        attempts=F("attempts") + 1,
        last_status_code=status_code,
        last_error="" if ok else (error or f"HTTP {status_code}")[:500],
        delivered_at=timezone.now() if ok else None,
    )
    if ok:
        logger.info("webhook delivery %s to subscription %s: %s", delivery.delivery_id, subscription.pk, status_code)
        return "succeeded"
    logger.warning(
        "webhook delivery %s to subscription %s failed (%s)%s",
        delivery.delivery_id, subscription.pk, error or status_code, "; giving up" if final else "; will retry",
    )  # fmt: skip
    if final:
        return "failed"
    raise WebhookDeliveryFailed(f"delivery {delivery.delivery_id}: {error or status_code}")
