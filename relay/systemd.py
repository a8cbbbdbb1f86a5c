"""systemd's sd_notify protocol in a few lines: no dependency needed.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service
started (so ``systemctl start`` returns when the port is open), and reads
``STOPPING=1`` when a drain begins. The protocol is one datagram to the unix
socket named by ``$NOTIFY_SOCKET`` (``@`` = abstract namespace); without that
variable this is a no-op, so running outside systemd costs nothing.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

_log = logging.getLogger("relay.error")


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        _log.warning("sd_notify_failed", extra={"fields": {"error": type(exc).__name__}})
        return False
    return True
