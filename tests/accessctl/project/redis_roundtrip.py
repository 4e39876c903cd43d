"""Run in a child process by the tests: settings built from this environment reach the Redis server.

``python -m tests.accessctl.project.redis_roundtrip [--config-only]`` sets Django up from the environment
(REDIS_URL, REDIS_CA_FILE, ACCESSCTL_VAR_DIR...), then writes and reads back through each client the
settings configure: Celery's broker (a message on a private queue) and result backend, the channel
layer and the cache. It prints one JSON line: the TLS options each client got (never the URLs, which
hold the password) and, unless ``--config-only``, ``"roundtrip": "ok"``.
"""

from __future__ import annotations

import json
import os
import sys
import uuid


def _plain(options: object) -> object:
    """TLS options as JSON: ssl.VerifyMode values by name."""
    if not isinstance(options, dict):
        return options
    return {key: getattr(value, "name", value) for key, value in options.items()}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")
    import django

    django.setup()
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    from django.conf import settings
    from django.core.cache import cache

    from accessctl.project.celery import app

    host = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    report: dict[str, object] = {
        "broker_use_ssl": _plain(app.conf.broker_use_ssl),
        "redis_backend_use_ssl": _plain(app.conf.redis_backend_use_ssl),
        "channels": _plain({k: v for k, v in host.items() if k != "address"}),
        "cache": _plain(settings.CACHES["default"].get("OPTIONS", {})),
    }
    if "--config-only" not in sys.argv:
        marker = uuid.uuid4().hex
        cache.set(f"roundtrip-{marker}", marker, 30)  # first: it fails at once (no retries) when refused
        assert cache.get(f"roundtrip-{marker}") == marker
        layer = get_channel_layer()
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.send)(channel, {"type": "roundtrip", "marker": marker})
        assert async_to_sync(layer.receive)(channel)["marker"] == marker
        app.backend.store_result(marker, {"marker": marker}, "SUCCESS")
        assert app.AsyncResult(marker).get(timeout=10) == {"marker": marker}
        with app.connection_for_write() as conn:
            queue = conn.SimpleQueue(f"roundtrip-{marker}")
            queue.put({"marker": marker})
            message = queue.get(timeout=10)
            message.ack()
            assert message.payload == {"marker": marker}, message.payload
            queue.queue.delete()
            queue.close()
        report["roundtrip"] = "ok"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
