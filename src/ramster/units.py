"""The units ramster counts in, and the one way text becomes a size or an address.

Pages. Everything below the front-ends moves 4096-byte pages: a zbud frame
is one page, a tmem index names one page, a backing file is an array of
pages, a swap export's block is one page and the wire protocol carries at
most one page of payload per put. The kernel code ramster follows hard-codes
PAGE_SHIFT 12 on x86; so does ramster, whatever the host's own page size,
because the stored formats (zbud's chunk arithmetic, a backing file's
layout, the peer protocol) depend on it. Every module takes PAGE_SIZE and
PAGE_SHIFT from here so that no second definition can drift.

Sizes. A size is given in bytes, as an int or as text:

    SIZE := BLANKS DIGITS BLANKS [LETTER [SUFFIX]] BLANKS
    LETTER := K | M | G | T          (any case)
    SUFFIX := B | iB                 (any case)

Multiples are always binary: "64K", "64KB" and "64KiB" are all 65536 bytes,
because every size ramster takes (memory, export size, request caps) is
counted in pages and a decimal kilobyte is not a whole number of them.
"4096", "4096B", "1M", "1 GiB" are sizes; "1.5G", "-1", "1X", "4096iB" and
"" are not: a fraction or a negative is more likely a typo than a wish, and
an error names the value and shows the grammar by example.

Addresses. A TCP address is HOST:PORT, [IPV6]:PORT, or *:PORT / :PORT for
every interface; an IPv6 address must be bracketed because its own colons
would otherwise swallow the port. Where a Unix socket makes sense (an NBD
listen address) "unix:PATH" names one; a path longer than sun_path's 107
bytes is refused here rather than by bind() with a less helpful message.
Every parse error is a ValueError whose message is one line for the user.
"""
from __future__ import annotations

import ipaddress
import os
import re
from typing import NamedTuple

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

_MULTIPLES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(i?b)?|(b))?\s*", re.IGNORECASE | re.ASCII)
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*", re.ASCII)
_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
_SUN_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a string such as "4096", "64K", "1M", "2GiB" (binary multiples)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid {what} {value}: must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m:
            return int(m.group(1)) * _MULTIPLES[(m.group(2) or "").lower()]
    raise ValueError(f"invalid {what} {value!r}: expected bytes or a size like 4096, 64M, 1G, 2GiB")


def format_size(n: int) -> str:
    """Bytes as the largest binary unit that keeps it readable: 1.5 GiB, 64.0 KiB, 512 B."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


class Address(NamedTuple):
    """A parsed address: TCP (host, port) with host None for every interface, or a Unix path."""
    host: str | None
    port: int
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return format_address("*" if self.host is None else self.host, self.port)


def format_address(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets so the port stays recognisable."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, what: str = "address", *, unix: bool = False) -> Address:
    """HOST:PORT, [IPV6]:PORT, *:PORT, :PORT and (when `unix`) unix:PATH -> Address."""
    shape = "HOST:PORT (e.g. 127.0.0.1:10809)" + (" or unix:PATH" if unix else "")
    if not isinstance(text, str) or not text:
        raise ValueError(f"invalid {what} {text!r}: expected {shape}")
    if text.startswith("unix:"):
        if not unix:
            raise ValueError(f"invalid {what} {text!r}: expected {shape}")
        path = text[5:]
        if not path or "\0" in path:
            raise ValueError(f"invalid {what} {text!r}: empty socket path")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(f"invalid {what} {text!r}: socket path longer than {_SUN_PATH_MAX} bytes")
        return Address(None, 0, path)
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"invalid {what} {text!r}: expected {shape}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid {what} {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"invalid {what} {text!r}: put IPv6 addresses in brackets, e.g. [::1]:10809")
    elif host in ("", "*"):
        return Address(None, int(port))
    elif not _HOST_RE.fullmatch(host):
        raise ValueError(f"invalid {what} {text!r}: bad host name {host!r}")
    return Address(host, int(port))
