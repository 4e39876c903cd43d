"""Where webhooks may be sent: public addresses only, unless ``settings.WEBHOOK_ALLOWED_HOSTS`` names them.

A webhook URL is chosen by whoever holds the ``webhooks:write`` scope (or the admin permission), so
without this check it is a way to make the server POST into the networks it can reach: loopback
services, the LAN, the cloud metadata endpoint (169.254.169.254). The rule:

* the scheme is ``http`` or ``https`` and the URL names a host;
* every address the host resolves to must be public: not loopback, private (RFC 1918, ULA),
  link-local, CGNAT (100.64/10), multicast, reserved, unspecified or documentation space. IPv4
  addresses embedded in IPv6 ones (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4,
  Teredo) are judged as the IPv4 address they carry;
* unless ``WEBHOOK_ALLOWED_HOSTS`` (``ACCESSCTL_WEBHOOK_ALLOWED_HOSTS``: host names, IP addresses
  and CIDR networks, comma-separated) names the host, or a network holding the address.

:func:`webhook_target_check` runs when a subscription is saved (API serializer, admin form): a host
that resolves to a refused address is refused there; a name that does not resolve (yet) is
accepted. :func:`webhook_target_resolve` runs before every delivery and returns the checked
addresses; the delivery connects to one of *those* addresses (``accessctl.webhooks``), so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot redirect it.
Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class WebhookTargetRefused(ValueError):
    """The URL may not receive webhooks (bad scheme, or a non-public address not allow-listed)."""


class WebhookTargetUnresolved(OSError):
    """The host name does not resolve (now): the delivery fails and is retried."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked destination: connect to ``addresses`` (in order), say ``host`` (Host header, TLS SNI)."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


@lru_cache(maxsize=8)
def _allow_list(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().lower().strip("[]")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return frozenset(names), tuple(networks)


def _allowed() -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    return _allow_list(tuple(settings.WEBHOOK_ALLOWED_HOSTS))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    for network in _NAT64:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_is_public(address: IPAddress) -> bool:
    """True when ``address`` is an ordinary public unicast address (see the module docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_is_public(embedded)
        if address.is_site_local:
            return False
    elif address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _address_allowed(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)) is not None:
        candidates.append(embedded)
    return any(c in n for c in candidates for n in networks if c.version == n.version)


def _split(url: str) -> WebhookTarget:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetRefused("The URL is not valid.") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookTargetRefused("Only http:// and https:// URLs can receive webhooks.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookTargetRefused("The URL names no host.")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default_port = 443 if scheme == "https" else 80
    return WebhookTarget(scheme=scheme, host=host, port=port or default_port, path=path, addresses=())


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookTargetUnresolved(f"{host} does not resolve: {exc}") from exc
    seen: dict[str, IPAddress] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone index
        seen.setdefault(text, ipaddress.ip_address(text))
    if not seen:
        raise WebhookTargetUnresolved(f"{host} has no address")
    return list(seen.values())


def webhook_target_resolve(*, url: str) -> WebhookTarget:
    """The checked addresses of ``url`` to connect to; raises :class:`WebhookTargetRefused` when any
    address the host resolves to is refused, :class:`WebhookTargetUnresolved` when it does not resolve."""
    target = _split(url)
    names, networks = _allowed()
    addresses = _resolve(target.host, target.port)
    if target.host.lower() not in names:
        refused = [a for a in addresses if not address_is_public(a) and not _address_allowed(a, networks)]
        if refused:
            raise WebhookTargetRefused(
                f"{target.host} resolves to a non-public address ({refused[0]}); webhooks go to public "
                "addresses only unless ACCESSCTL_WEBHOOK_ALLOWED_HOSTS names the host or its network."
            )
    return WebhookTarget(
        scheme=target.scheme,
        host=target.host,
        port=target.port,
        path=target.path,
        addresses=tuple(str(a) for a in addresses),
    )


def webhook_target_check(*, url: str) -> None:
    """Configuration-time check of a subscription URL (see the module docstring)."""
    try:
        webhook_target_resolve(url=url)
    except WebhookTargetUnresolved:
        return  # checked again, with its then addresses, before every delivery
