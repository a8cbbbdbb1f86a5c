"""Which network addresses the relay may fetch a client's image URL from: public ones only.

Pure. A client that can make the relay fetch any URL can make it reach what only
the relay can reach: the loopback interface (its own /metrics, a Redis), the
private network behind it, or a cloud metadata service (169.254.169.254 on AWS,
GCP and Azure; 100.100.100.200 on Alibaba Cloud). So an address must be globally
routable unicast: Python's ``is_global`` (which already excludes the private,
loopback, link-local, shared 100.64/10, reserved and documentation ranges), and
additionally not multicast nor unspecified. IPv6 forms that embed an IPv4
address (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged
by that IPv4 address, so ``::ffff:127.0.0.1`` is loopback here too.

The check runs on every address a name resolves to, after resolution, and on
every hop of a redirect (``fetch.py``): checking the URL's host name alone would
let DNS answer something else at connect time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

__all__ = ["AddressPolicy", "is_public_address"]

#: ``address → allowed?``: the check ``fetch.py`` applies (tests may widen it for loopback).
AddressPolicy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address; False for anything the relay's own network holds."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not address.is_multicast and not address.is_unspecified
