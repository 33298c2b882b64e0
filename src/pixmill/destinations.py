"""Where a webhook may go: an http(s) URL whose address is public, unless PIXMILL_WEBHOOK_ALLOW names
the host or a network holding the address.

The check that counts is made on the address actually connected to (pixmill.worker.webhooks), so a
name that resolves to a public address when a job is submitted and to a private one later gains
nothing. Checking the URL alone, at submission, refuses at once what is plainly local.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidRequest

__all__ = ["Destinations", "WebhookRefused", "MAX_URL_LENGTH"]

MAX_URL_LENGTH = 2048
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}   # AWS, GCP, Azure and others; AWS on IPv6; Alibaba


class WebhookRefused(InvalidRequest):
    """A webhook URL that may not be used: not http(s), malformed, or to an address that is not public."""

    code = "webhook_refused"


@dataclass(frozen=True)
class Destinations:
    """The policy: public addresses, and the hosts and networks the allow-list names."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def allowing(cls, entries: Iterable[str]) -> Destinations:
        """The policy of an allow-list: each entry a host name, an address or a CIDR network."""
        hosts, networks = set(), []
        for entry in (e.strip().lower() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not HOST_NAME.fullmatch(entry):
                    raise ValueError(f"PIXMILL_WEBHOOK_ALLOW: {entry!r} is neither a host name nor an address "
                                     "or network") from None
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def check_url(self, url: str) -> str:
        """The URL, if a webhook may be sent to it as far as the URL shows; WebhookRefused otherwise."""
        url = url.strip()
        if len(url) > MAX_URL_LENGTH:
            raise WebhookRefused(f"webhook_url is over {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            parts.port   # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise WebhookRefused(f"webhook_url is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused(f"webhook_url must be an http or https URL with a host, got {url[:80]!r}")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("webhook_url may not hold a user name or password; verify the signature instead")
        host = parts.hostname.rstrip(".")
        if host in self.hosts:
            return url
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host == "localhost" or host.endswith(".localhost"):
                raise WebhookRefused(f"webhook_url {url[:80]!r}: {host} is this machine (loopback); "
                                     "PIXMILL_WEBHOOK_ALLOW can allow it") from None
            return url   # a name: its addresses are checked when it is connected to
        reason = self.refusal(host, address)
        if reason:
            raise WebhookRefused(f"webhook_url {url[:80]!r}: {reason}")
        return url

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why a webhook to host may not connect to address (None: it may)."""
        if host.lower().rstrip(".") in self.hosts:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address.version == net.version and address in net for net in self.networks):
            return None
        if address.is_global and not address.is_multicast and address not in METADATA:
            return None
        return f"{address} is {_kind(address)}, not public; PIXMILL_WEBHOOK_ALLOW can allow it"


def _kind(address: IPAddress) -> str:
    if address in METADATA:
        return "a cloud metadata address"
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    return "a special-purpose address"
