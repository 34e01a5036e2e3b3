"""The service manager's readiness protocol (sd_notify), spoken by hand: no library needed.

A service started by systemd with Type=notify finds a socket path in the
environment variable NOTIFY_SOCKET. It tells the manager how it is doing by
sending datagrams of newline-separated KEY=VALUE assignments to that Unix
datagram socket:

    READY=1         every listener is bound: clients may connect now. Until
                    this arrives, `systemctl start` waits, and units ordered
                    After= this one do not start.
    STOPPING=1      a stop signal was received; what follows is the drain.
    RELOADING=1     a reload (SIGHUP) began; READY=1 ends it. systemd 253 and
                    later want MONOTONIC_USEC= (CLOCK_MONOTONIC, microseconds)
                    in the same datagram, so notify() adds it.
    STATUS=text     one line shown by `systemctl status`.

A path starting with "@" names a socket in Linux's abstract namespace: the
"@" stands for the leading NUL byte of the address. The manager reads the
sender's credentials from the datagram, so nothing else identifies us.

Without NOTIFY_SOCKET (run from a shell, a test, a container without
systemd) every call is a no-op, so the node calls notify() unconditionally.
A failure to send is logged once and otherwise ignored: a manager that went
away must not stop a node that is serving pages.
"""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("ramster.sdnotify")

_warned = False


def enabled() -> bool:
    """True when a service manager is listening (NOTIFY_SOCKET is set)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def address(path: str) -> str | bytes:
    """The socket address for a NOTIFY_SOCKET value ("@name" is abstract: a leading NUL)."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "STATUS=...", several joined by newlines) to the service
    manager. True if it was sent; False without NOTIFY_SOCKET or when sending failed."""
    global _warned
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if "RELOADING=1" in state.split("\n") and "MONOTONIC_USEC=" not in state:
        state += f"\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address(path))
    except (OSError, ValueError) as err:  # ValueError: a path with a NUL byte in it
        if not _warned:
            _warned = True
            log.warning("cannot notify the service manager at NOTIFY_SOCKET=%s: %s", path, err)
        return False
    return True


def status(text: str) -> bool:
    """STATUS=text, on one line (a newline would start another assignment)."""
    return notify("STATUS=" + " ".join(text.split("\n")))
