"""Which webhook URLs may be called: hosts PREVIEW_WEBHOOK_HOSTS lists, private ones by address.

The rule, in two steps. At submit, a pure check of the URL against the list (no DNS): a
host name matches an entry of that name, an IP address an entry of that address (an
IPv4-mapped IPv6 address is its IPv4 one); an entry without a port allows the scheme's own
(80, 443). At delivery, the host is checked again and resolved once: a name whose every
address is public (global unicast) is called at the address checked, never resolved again;
a name with any loopback, private, link-local, shared, reserved, multicast or unspecified
address is refused, even "localhost" listed by name. An address that is not public is
reached only when the URL names that very address and the list holds it (127.0.0.1:8123).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from preview_worker.errors import WebhookRefused
from preview_worker.schema import Problem
from preview_worker.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # IPv4 addresses reached through IPv6
NOTIFY_URL = "/notify/url"  # where a payload holds the URL, as a JSON Pointer
Resolver = Callable[[str, int], list[str]]  # host, port -> the addresses it resolves to


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: where to connect, what to ask for, whom to name."""

    scheme: str
    host: str  # lowercased, without the brackets of an IPv6 address
    port: int
    path: str  # path and query; "/" when the URL has none
    address: IPAddress | None  # the host, when it is an IP address

    @property
    def authority(self) -> str:
        """Return host:port as entries of PREVIEW_WEBHOOK_HOSTS spell it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def host_header(self) -> str:
        """Return the Host header: the URL's host, with its port unless the scheme's own."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    """Take a webhook URL apart, or raise ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password")
    host = parts.hostname or ""
    if not host or "%" in host:
        raise ValueError("must name a host")
    port = parts.port  # raises ValueError for a port that is not a number in range
    if port == 0:
        raise ValueError("must not name port 0")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme], path, _ip(host))


def _ip(text: str) -> IPAddress | None:
    """Return the IP address a host is, unmapped, or None for a name."""
    try:
        return unmapped(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def unmapped(address: IPAddress) -> IPAddress:
    """Return the IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d) stands for."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Tell whether an address is global unicast: not loopback, private, link-local and such."""
    address = unmapped(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return False
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if address in NAT64:  # the IPv4 address a NAT64 gateway would call
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
        or address.is_loopback or address.is_link_local or address.is_private
    )


def _entry(entry: str) -> tuple[str, int | None]:
    """Split one (already checked) entry of PREVIEW_WEBHOOK_HOSTS into host and port."""
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]")
        return host, int(port[1:]) if port else None
    host, _, port = entry.partition(":")
    return host, int(port) if port else None


def is_listed(target: Target, entries: tuple[str, ...]) -> bool:
    """Tell whether an entry allows the URL's host and port: names by name, IPs by address."""
    for entry in entries:
        host, port = _entry(entry)
        if target.port != (port or DEFAULT_PORTS[target.scheme]):
            continue
        address = _ip(host)
        if address is None and target.address is None and host == target.host:
            return True
        if address is not None and address == target.address:
            return True
    return False


def url_problem(url: str, settings: Settings) -> str | None:
    """Say why a webhook URL may not be called under these settings, or None when it may."""
    if not settings.webhook_hosts:
        return "webhooks are off: this service lists no webhook host"
    try:
        target = parse_url(url)
    except ValueError as error:
        return str(error)
    if not is_listed(target, settings.webhook_hosts):
        return f"{target.authority} is not an allowed webhook host"
    return None


def payload_problems(payload: Any, settings: Settings) -> list[Problem]:
    """Return the problem of a valid payload's notify URL under these settings, if any."""
    notify = payload.get("notify") if isinstance(payload, dict) else None
    url = notify.get("url") if isinstance(notify, dict) else None
    problem = url_problem(url, settings) if isinstance(url, str) else None
    return [Problem(NOTIFY_URL, problem)] if problem else []


def resolve(host: str, port: int) -> list[str]:
    """Return the addresses a host name resolves to, as the system resolver gives them."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in found]


def pinned_address(target: Target, resolver: Resolver = resolve) -> str:
    """Return the one address to connect to, checked: resolved once, so it cannot change.

    Raises WebhookRefused when a name resolves to any address that is not public, and
    OSError (socket.gaierror) when it does not resolve.
    """
    if target.address is not None:
        return str(target.address)  # listed as this very address: no resolution at all
    addresses = [ipaddress.ip_address(found.partition("%")[0])
                 for found in resolver(target.host, target.port)]
    if not addresses:
        raise OSError(f"{target.host} resolves to no address")
    hidden = [address for address in addresses if not is_public(address)]
    if hidden:
        raise WebhookRefused(
            f"{target.host} resolves to {hidden[0]}, not a public address; a private address "
            "is called only when the URL names it and PREVIEW_WEBHOOK_HOSTS lists it"
        )
    return str(addresses[0])


def check_target(url: str, settings: Settings) -> Target:
    """Return a webhook URL's target if the settings allow it now; raise WebhookRefused if not."""
    problem = url_problem(url, settings)
    if problem is not None:
        raise WebhookRefused(f"{NOTIFY_URL} {problem}")
    return parse_url(url)
