"""Webhook delivery: the signed POST of one recorded delivery (run by ``accessctl.tasks.webhook_deliver``).

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

Which deliveries exist (fan-out to subscriptions, enqueueing) is ``accessctl.webhooks``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import time

from django.db.models import F
from django.utils import timezone

from accessctl.metrics import WEBHOOK_DELIVERIES
from accessctl.models import WebhookDelivery
from accessctl.webhook_targets import WebhookTargetRefused, WebhookTargetUnresolved, webhook_target_resolve

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Accessctl-Signature"
DELIVERY_HEADER = "X-Accessctl-Delivery"
EVENT_HEADER = "X-Accessctl-Event"
USER_AGENT = "accessctl-webhooks/1"
DEFAULT_TIMEOUT_S = 10.0


class WebhookDeliveryFailed(Exception):
    """A delivery attempt failed and should be retried (raised to Celery's ``autoretry_for``)."""


# --- signing -----------------------------------------------------------------------------------


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


def webhook_body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes sent (and signed) for ``delivery``: identical on every retry."""
    envelope = {
        "id": str(delivery.delivery_id),
        "type": delivery.event_type,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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
        WEBHOOK_DELIVERIES.labels("refused").inc()
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
    WEBHOOK_DELIVERIES.labels("succeeded" if ok else "failed" if final else "retry").inc()
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
