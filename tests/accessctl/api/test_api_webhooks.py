"""Signed webhooks: signing, fan-out, delivery with retries against a real local HTTP server, and the API."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from django.urls import reverse

from accessctl.models import WebhookDelivery, WebhookSubscription
from accessctl.project.celery import app as celery_app
from accessctl.tasks import WEBHOOK_MAX_RETRIES, webhook_deliver
from accessctl.webhook_delivery import verify_signature, webhook_delivery_attempt, webhook_signature
from accessctl.webhook_targets import WebhookTargetRefused, address_is_public, webhook_target_resolve
from accessctl.webhooks import webhook_dispatch
from tests.api_support import make_user, session_client, token_client

pytestmark = pytest.mark.django_db

SECRET = "whsec_test_secret_0123456789"


def _receiver_handler(state: SimpleNamespace) -> type[BaseHTTPRequestHandler]:
    """A request handler recording each POST in ``state.received`` and answering ``state.statuses``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(SimpleNamespace(path=self.path, headers=dict(self.headers), body=body))
            if state.delay_s:
                time.sleep(state.delay_s)
            code = state.statuses.pop(0) if state.statuses else 200
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def receiver(settings) -> Iterator[SimpleNamespace]:
    """A real HTTP endpoint on 127.0.0.1: answers the queued status codes, then 200.

    Loopback is not a webhook target unless allow-listed (accessctl.webhook_targets): it is here."""
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    state = SimpleNamespace(statuses=[], received=[], delay_s=0.0)
    Handler = _receiver_handler(state)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/accessctl"
    yield state
    server.shutdown()
    server.server_close()


def _subscription(url: str, event_types: list[str] | None = None, **kwargs: object) -> WebhookSubscription:
    return WebhookSubscription.objects.create(
        name=kwargs.pop("name", "siem"),
        url=url,
        secret=SECRET,
        event_types=event_types or ["access.granted", "access.denied"],
        **kwargs,
    )


def _delivery(url: str) -> WebhookDelivery:
    subscription = _subscription(url)
    return WebhookDelivery.objects.create(
        subscription=subscription, event_type="access.granted", payload={"event_id": 1, "decision": "grant"}
    )


# --- signing -------------------------------------------------------------------------------------


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"id":"x","type":"access.granted"}'
    now = 1_800_000_000
    header = webhook_signature(SECRET, body, now)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert verify_signature(SECRET, header, body.decode(), now=now)
    assert not verify_signature(SECRET, header, body + b" ", now=now)  # tampered body
    assert not verify_signature("another-secret", header, body, now=now)
    assert not verify_signature(SECRET, header, body, now=now + 301)  # too old: replay window
    assert not verify_signature(SECRET, header, body, tolerance_s=5, now=now + 6)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(SECRET, rotated, body, now=now)
    for garbage in ("", "t=abc,v1=00", f"t={now}", "v1=00", "nonsense"):
        assert not verify_signature(SECRET, garbage, body, now=now)


# --- fan-out -------------------------------------------------------------------------------------


def test_dispatch_targets_active_matching_subscriptions_after_commit(
    django_capture_on_commit_callbacks, monkeypatch
) -> None:
    enqueued: list[int] = []
    monkeypatch.setattr("accessctl.webhooks._enqueue", enqueued.append)
    granted = _subscription("http://127.0.0.1:9/a", ["access.granted"], name="a")
    _subscription("http://127.0.0.1:9/b", ["access.denied"], name="b")
    _subscription("http://127.0.0.1:9/c", ["access.granted"], name="c", active=False)
    everything = _subscription("http://127.0.0.1:9/d", ["*"], name="d")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        deliveries = webhook_dispatch("access.granted", {"event_id": 7})
    assert {d.subscription_id for d in deliveries} == {granted.pk, everything.pk}
    assert enqueued == []  # nothing leaves before the transaction commits
    for callback in callbacks:
        callback()
    assert sorted(enqueued) == sorted(d.pk for d in deliveries)
    assert [d.subscription_id for d in webhook_dispatch("person.updated", {})] == [everything.pk]


def test_dispatch_delivers_end_to_end_through_celery(receiver, django_capture_on_commit_callbacks) -> None:
    _subscription(receiver.url, ["access.denied"])
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            (delivery,) = webhook_dispatch("access.denied", {"event_id": 42, "reason": "unknown_face"})
    finally:
        celery_app.conf.task_always_eager = False
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 1 and delivery.last_status_code == 200
    (request,) = receiver.received
    assert request.headers["X-Accessctl-Event"] == "access.denied"
    assert request.headers["X-Accessctl-Delivery"] == str(delivery.delivery_id)
    assert verify_signature(SECRET, request.headers["X-Accessctl-Signature"], request.body)
    envelope = json.loads(request.body)
    assert envelope["id"] == str(delivery.delivery_id) and envelope["type"] == "access.denied"
    assert envelope["data"] == {"event_id": 42, "reason": "unknown_face"}


# --- delivery ------------------------------------------------------------------------------------


def test_delivery_fails_then_succeeds_with_retries(receiver) -> None:
    receiver.statuses = [500, 503]
    delivery = _delivery(receiver.url)
    result = webhook_deliver.apply(args=[delivery.pk])  # eager: Celery's autoretry runs the retries inline
    assert result.get() == "succeeded"
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 3
    assert delivery.last_status_code == 200 and delivery.last_error == "" and delivery.delivered_at is not None
    assert len(receiver.received) == 3
    assert len({r.headers["X-Accessctl-Delivery"] for r in receiver.received}) == 1  # same id on each retry
    assert len({r.body for r in receiver.received}) == 1  # identical body
    for request in receiver.received:
        assert verify_signature(SECRET, request.headers["X-Accessctl-Signature"], request.body)
    # Idempotent: a delivered row is not sent again (redelivered task, duplicate enqueue).
    assert webhook_deliver.apply(args=[delivery.pk]).get() == "already_succeeded"
    assert len(receiver.received) == 3


def test_delivery_gives_up_after_max_retries(receiver) -> None:
    receiver.statuses = [500] * (WEBHOOK_MAX_RETRIES + 1)
    delivery = _delivery(receiver.url)
    assert webhook_deliver.apply(args=[delivery.pk]).get() == "failed"
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == WEBHOOK_MAX_RETRIES + 1
    assert delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"
    assert webhook_deliver.apply(args=[delivery.pk]).get() == "already_failed"


def test_task_declares_backoff_and_late_ack() -> None:
    assert webhook_deliver.acks_late is True
    assert webhook_deliver.retry_backoff and webhook_deliver.retry_jitter
    assert webhook_deliver.max_retries == WEBHOOK_MAX_RETRIES


def test_network_errors_timeouts_and_redirects_are_failed_attempts(receiver) -> None:
    closed = _delivery("http://127.0.0.1:1/nothing-listens")
    with pytest.raises(Exception, match="delivery"):
        webhook_delivery_attempt(delivery_id=closed.pk, final=False)
    closed.refresh_from_db()
    assert closed.status == "pending" and closed.attempts == 1 and closed.last_status_code is None
    assert "refused" in closed.last_error.lower() or "error" in closed.last_error.lower()

    receiver.delay_s = 1.0
    slow = _delivery(receiver.url)
    assert webhook_delivery_attempt(delivery_id=slow.pk, final=True, timeout_s=0.2) == "failed"
    slow.refresh_from_db()
    assert slow.status == "failed" and "timed out" in slow.last_error.lower()
    receiver.delay_s = 0.0

    receiver.statuses = [302]
    moved = _delivery(receiver.url)
    assert webhook_delivery_attempt(delivery_id=moved.pk, final=True) == "failed"
    moved.refresh_from_db()
    assert moved.last_status_code == 302
    assert [r.path for r in receiver.received].count("/elsewhere") == 0  # redirect not followed


# --- API -----------------------------------------------------------------------------------------


def test_subscription_api_shows_the_secret_once(monkeypatch) -> None:
    client = token_client(["webhooks:write"])
    created = client.post(
        "/api/v1/webhook-subscriptions/",
        {"name": "SIEM", "url": "https://siem.example.test/hook", "event_types": ["access.denied", "alarm.raised"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_")
    url = f"/api/v1/webhook-subscriptions/{body['id']}/"
    assert "secret" not in client.get(url).json()
    assert client.patch(url, {"active": False}, format="json").json()["active"] is False
    rotated = client.post(f"{url}rotate-secret/").json()["secret"]
    assert rotated != body["secret"] and WebhookSubscription.objects.get().secret == rotated
    chosen = client.post(
        "/api/v1/webhook-subscriptions/",
        {"name": "Mine", "url": "http://hr.example.test/", "event_types": ["*"], "secret": "x" * 32},
        format="json",
    )
    assert chosen.json()["secret"] == "x" * 32
    bad = client.post(
        "/api/v1/webhook-subscriptions/",
        {"name": "Bad", "url": "file:///etc/passwd", "event_types": ["nope"]},
        format="json",
    )
    assert bad.status_code == 400 and {"url", "event_types"} <= set(bad.json()["error"]["details"])
    assert token_client(["events:read", "people:write"]).get("/api/v1/webhook-subscriptions/").status_code == 403
    assert client.delete(url).status_code == 204


def test_delivery_log_api_and_redeliver(monkeypatch, django_capture_on_commit_callbacks, django_assert_num_queries):
    enqueued: list[int] = []
    monkeypatch.setattr("accessctl.webhooks._enqueue", enqueued.append)
    subscription = _subscription("http://127.0.0.1:9/")
    for i in range(4):
        WebhookDelivery.objects.create(
            subscription=subscription, event_type="access.denied", payload={"i": i}, status="failed", attempts=11
        )
    client = token_client(["webhooks:write"])
    client.get("/api/v1/webhook-deliveries/")
    with django_assert_num_queries(5):  # 2 of them: the token owner's permissions
        listed = client.get("/api/v1/webhook-deliveries/").json()
    assert listed["count"] == 4 and listed["results"][0]["payload"] == {"i": 3}
    assert client.get("/api/v1/webhook-deliveries/", {"status": "succeeded"}).json()["count"] == 0
    assert client.get("/api/v1/webhook-deliveries/", {"subscription": subscription.pk}).json()["count"] == 4
    target = listed["results"][0]["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhook-deliveries/{target}/redeliver/")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    assert enqueued == [target]
    assert client.post("/api/v1/webhook-deliveries/", {}, format="json").status_code == 405


def test_admin_shows_the_delivery_log_and_redelivers(monkeypatch, django_capture_on_commit_callbacks) -> None:
    enqueued: list[int] = []
    monkeypatch.setattr("accessctl.webhooks._enqueue", enqueued.append)
    client = session_client(make_user(superuser=True))
    added = client.post(
        reverse("admin:accessctl_webhooksubscription_add"),
        {"name": "SIEM", "url": "https://siem.example.test/hook", "event_types": ["alarm.raised"], "active": "on"},
    )
    assert added.status_code == 302, added.content
    subscription = WebhookSubscription.objects.get(name="SIEM")
    assert subscription.secret.startswith("whsec_")  # generated when left empty
    delivery = WebhookDelivery.objects.create(
        subscription=subscription, event_type="alarm.raised", payload={"alarm_id": 3}, status="failed", attempts=11
    )
    changelist = client.get(reverse("admin:accessctl_webhookdelivery_changelist"))
    assert changelist.status_code == 200 and "alarm.raised" in changelist.content.decode()
    assert client.get(reverse("admin:accessctl_webhookdelivery_change", args=[delivery.pk])).status_code == 200
    assert client.get(reverse("admin:accessctl_webhookdelivery_add")).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("admin:accessctl_webhookdelivery_changelist"),
            {"action": "redeliver", "_selected_action": [delivery.pk]},
        )
    delivery.refresh_from_db()
    assert delivery.status == "pending" and enqueued == [delivery.pk]


# --- targets: public addresses only, unless allow-listed (SSRF) -----------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://224.0.0.1/",  # multicast
    "http://0.0.0.0:8000/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped 169.254.169.254
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/",  # 127.0.0.1 in inet_aton's hex shorthand
    "https://192.0.2.10/",  # documentation range
    "http://240.0.0.1/",  # reserved
]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.251", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:93.184.215.14", True),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::1", False),  # 6to4 wrapping 127.0.0.1
        ("ff02::1", False),
        ("fec0::1", False),  # site-local
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert address_is_public(ipaddress.ip_address(address)) is public


def test_subscription_api_refuses_internal_targets(settings) -> None:
    client = token_client(["webhooks:write"])
    for url in INTERNAL_URLS:
        response = client.post(
            "/api/v1/webhook-subscriptions/", {"name": "x", "url": url, "event_types": ["*"]}, format="json"
        )
        assert response.status_code == 400, (url, response.content)
        problem = str(response.json()["error"]["details"]["url"])
        # Obfuscated numeric hosts are not even valid URLs to Django; everything else resolves inside.
        expected = "valid URL" if url in ("http://2130706433/", "http://0x7f.1/") else "non-public address"
        assert expected in problem, (url, problem)
    assert not WebhookSubscription.objects.exists()
    # Changing an existing subscription to an internal URL is refused too.
    created = client.post(
        "/api/v1/webhook-subscriptions/",
        {"name": "ok", "url": "https://93.184.215.14/hook", "event_types": ["*"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    patched = client.patch(
        f"/api/v1/webhook-subscriptions/{created.json()['id']}/", {"url": "http://127.0.0.1:6390/"}, format="json"
    )
    assert patched.status_code == 400
    # The allow-list opens named hosts and networks, and nothing else.
    settings.WEBHOOK_ALLOWED_HOSTS = ["localhost", "10.0.0.0/8", "::1"]
    for url in ("http://localhost/hook", "http://10.1.2.3/", "http://[::1]/"):
        response = client.post(
            "/api/v1/webhook-subscriptions/", {"name": url, "url": url, "event_types": ["*"]}, format="json"
        )
        assert response.status_code == 201, (url, response.content)
    refused = client.post(
        "/api/v1/webhook-subscriptions/",
        {"name": "meta", "url": "http://169.254.169.254/", "event_types": ["*"]},
        format="json",
    )
    assert refused.status_code == 400


def test_admin_refuses_internal_targets() -> None:
    client = session_client(make_user(superuser=True))
    response = client.post(
        reverse("admin:accessctl_webhooksubscription_add"),
        {"name": "meta", "url": "http://169.254.169.254/latest/", "event_types": ["alarm.raised"], "active": "on"},
    )
    assert response.status_code == 200 and "non-public address" in response.content.decode()
    assert not WebhookSubscription.objects.exists()


def test_delivery_refuses_an_internal_target_stored_before_the_check(receiver, settings) -> None:
    """A row that points inside (saved before this check, or an allow-list entry since removed) is refused
    at delivery: never connected to, not retried."""
    delivery = _delivery(receiver.url)
    settings.WEBHOOK_ALLOWED_HOSTS = []  # the receiver fixture allowed 127.0.0.1: take it back
    assert webhook_delivery_attempt(delivery_id=delivery.pk, final=False) == "refused"
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 1 and delivery.last_status_code is None
    assert delivery.last_error.startswith("refused:") and "127.0.0.1" in delivery.last_error
    assert receiver.received == []  # the attempt is synchronous: it is over, and nothing arrived


def test_delivery_connects_to_the_checked_address_not_a_rebound_one(receiver, monkeypatch, settings) -> None:
    """DNS rebinding: the name resolves to a public address when checked, to loopback right after. The
    delivery connects to the checked address; the loopback receiver never hears from it."""
    settings.WEBHOOK_ALLOWED_HOSTS = []
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    answers = [[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]]  # public (unreachable here)
    rebound = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    calls: list[str] = []

    def resolver(host, *args, **kwargs):
        calls.append(host)
        return answers.pop(0) if answers else rebound

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    delivery = _delivery(f"http://hooks.rebind.test:{port}/hooks/accessctl")
    assert webhook_delivery_attempt(delivery_id=delivery.pk, final=True, timeout_s=0.5) == "failed"
    delivery.refresh_from_db()
    assert calls == ["hooks.rebind.test"]  # resolved once, by the check; the connection used its answer
    assert receiver.received == []
    assert "93.184.215.14" in delivery.last_error or "timed out" in delivery.last_error.lower()
    # The same name answering loopback at check time is refused outright.
    with pytest.raises(WebhookTargetRefused, match="non-public"):
        webhook_target_resolve(url=f"http://hooks.rebind.test:{port}/")


def test_delivery_reaches_an_allow_listed_name_with_its_host_header(receiver, monkeypatch, settings) -> None:
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal.test"]
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    )
    delivery = _delivery(f"http://hooks.internal.test:{port}/in?x=1")
    assert webhook_delivery_attempt(delivery_id=delivery.pk, final=True) == "succeeded"
    (request,) = receiver.received
    assert request.path == "/in?x=1" and request.headers["Host"] == f"hooks.internal.test:{port}"


def _tls_files(directory, host: str) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for ``host`` signed by it: (ca.pem, cert.pem, key.pem)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_https_delivery_to_the_checked_address_verifies_the_host_name(monkeypatch, settings, tmp_path) -> None:
    """HTTPS to a pinned address still sends SNI and verifies the certificate against the URL's name."""
    import ssl

    ca, cert, key = _tls_files(tmp_path, "hooks.tls.test")
    state = SimpleNamespace(statuses=[], received=[], delay_s=0.0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _receiver_handler(state))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_port
    try:
        settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.tls.test", "wrong.tls.test"]
        monkeypatch.setenv("SSL_CERT_FILE", ca)  # the system trust store, for this test: the throwaway CA
        answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: answer)
        delivery = _delivery(f"https://hooks.tls.test:{port}/tls")
        assert webhook_delivery_attempt(delivery_id=delivery.pk, final=True) == "succeeded"
        (request,) = state.received
        assert request.path == "/tls" and verify_signature(
            SECRET, request.headers["X-Accessctl-Signature"], request.body
        )
        # The same server under a name its certificate does not carry: refused by the TLS check.
        wrong = _delivery(f"https://wrong.tls.test:{port}/tls")
        assert webhook_delivery_attempt(delivery_id=wrong.pk, final=True) == "failed"
        wrong.refresh_from_db()
        assert "certificate" in wrong.last_error.lower() and len(state.received) == 1
    finally:
        server.shutdown()
        server.server_close()
