"""Connection options for a real Redis: password URLs and TLS (``rediss://``) with verified certificates.

Celery (broker and results), channels-redis and Django's cache each take a URL; a ``rediss://``
URL also needs the TLS options, given the same way to all of them (redis-py's keyword names, which
Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` accept too). The server certificate is always
verified: a URL that asks for less is refused. Used by the settings, so nothing here imports Django
models.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from django.core.exceptions import ImproperlyConfigured

_VERIFIED = {"required", "cert_required"}


def redis_tls_options(
    url: str, *, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> dict[str, object]:
    """TLS options for ``url``: certificate verification required, against ``ca_file`` or the system CAs.

    ``{}`` for a plain ``redis://`` or ``unix://`` URL. ``cert_file``/``key_file``: a client certificate
    for servers that require one.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return {}
    asked = parse_qs(parts.query).get("ssl_cert_reqs", [])
    if any(value.lower() not in _VERIFIED for value in asked):
        raise ImproperlyConfigured(
            f"a rediss:// URL may not turn certificate verification off (ssl_cert_reqs={asked[0]!r}); "
            "set REDIS_CA_FILE to the CA that signed the server's certificate instead"
        )
    options: dict[str, object] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for name, value in (("REDIS_CA_FILE", ca_file), ("REDIS_CERT_FILE", cert_file), ("REDIS_KEY_FILE", key_file)):
        if value and not Path(value).is_file():
            raise ImproperlyConfigured(f"{name}={value} is not a readable file")
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    if cert_file:
        options["ssl_certfile"] = cert_file
    if key_file:
        options["ssl_keyfile"] = key_file
    return options
