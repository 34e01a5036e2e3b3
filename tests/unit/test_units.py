"""ramster.units: the one size grammar, the one address grammar, the page constants."""
from __future__ import annotations

import pytest

import ramster
from ramster import units
from ramster.units import Address, format_address, format_size, parse_address, parse_size

GiB = 1 << 30


def test_page_constants():
    assert units.PAGE_SIZE == 4096 == 1 << units.PAGE_SHIFT
    assert ramster.PAGE_SIZE is units.PAGE_SIZE


def test_no_module_defines_its_own_page_size():
    import pathlib
    import re

    src = pathlib.Path(units.__file__).parent
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if p.name != "units.py" and re.search(r"^PAGE_(SIZE|SHIFT)\s*=", p.read_text(), re.M)]
    assert offenders == []


@pytest.mark.parametrize("text,want", [
    ("4096", 4096), ("0", 0), ("64K", 64 << 10), ("64k", 64 << 10), ("1M", 1 << 20), ("1G", GiB),
    ("2T", 2 << 40), ("1KiB", 1024), ("3mib", 3 << 20), ("1GiB", GiB), ("1gb", GiB), ("64KB", 64 << 10),
    (" 8M ", 8 << 20), ("1 GiB", GiB), ("4096B", 4096), ("4096b", 4096), (8192, 8192), (0, 0),
])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", " ", "M", "GiB", "1.5G", "-4096", "+4096", "1X", "12 34", "4096iB",
                                  "1MiBB", "1e6", "0x1000", "1_000", "１２", True, False, None, 1.0, -1, b"4096"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match=r"^invalid size ") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_parse_size_errors_name_the_setting_and_show_the_grammar():
    with pytest.raises(ValueError) as info:
        parse_size("lots", "--memory")
    assert str(info.value) == "invalid --memory 'lots': expected bytes or a size like 4096, 64M, 1G, 2GiB"
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(-4096, "memory")


def test_format_size():
    assert format_size(0) == "0 B"
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 << 30) == "3.0 GiB"
    assert format_size(5 << 40) == "5.0 TiB"


@pytest.mark.parametrize("size", [4096, 1 << 20, 3 << 30, 2 << 40])
def test_format_size_reads_back(size):
    number, unit = format_size(size).split()
    assert parse_size(number.removesuffix(".0") + unit) == size


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:10809", Address("127.0.0.1", 10809)), ("[::1]:0", Address("::1", 0)),
    (":10809", Address(None, 10809)), ("*:1", Address(None, 1)), ("localhost:5", Address("localhost", 5)),
    ("node-1.example.org:7701", Address("node-1.example.org", 7701)), ("[::]:9105", Address("::", 9105)),
    ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
])
def test_parse_address(text, want):
    got = parse_address(text)
    assert got == want and not got.is_unix
    host, port, path = got  # callers unpack it
    assert (host, port, path) == (want.host, want.port, None)


@pytest.mark.parametrize("text", ["10809", "host:", "host:99999", "::1:80", "host:port", "[::1]", "[nope]:80",
                                  "bad host:1", "a*b:1", ":", "", "-host:1", "host:-1", "host: 80", "host:１２", "host:000080000", None, 7701])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match=r"^invalid listen address ") as info:
        parse_address(text, "listen address", unix=True)
    assert "\n" not in str(info.value)


def test_parse_address_says_why():
    with pytest.raises(ValueError, match=r"put IPv6 addresses in brackets"):
        parse_address("::1:80")
    with pytest.raises(ValueError, match=r"'nope' is not an IPv6 address"):
        parse_address("[nope]:80")
    with pytest.raises(ValueError, match=r"bad host name 'bad host'"):
        parse_address("bad host:1")


def test_unix_addresses_only_where_allowed():
    got = parse_address("unix:/run/ramster.sock", unix=True)
    assert got.is_unix and got.path == "/run/ramster.sock" and str(got) == "unix:/run/ramster.sock"
    with pytest.raises(ValueError, match=r"^invalid metrics address 'unix:/x': expected HOST:PORT \(e\.g\."):
        parse_address("unix:/x", "metrics address")
    with pytest.raises(ValueError, match="empty socket path"):
        parse_address("unix:", unix=True)
    with pytest.raises(ValueError, match="empty socket path"):
        parse_address("unix:/a\0b", unix=True)
    parse_address("unix:/" + "x" * 106, unix=True)
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        parse_address("unix:/" + "x" * 107, unix=True)


def test_format_address_round_trips():
    assert format_address("::1", 80) == "[::1]:80"
    assert format_address("10.0.0.1", 80) == "10.0.0.1:80"
    for text in ("[::1]:80", "10.0.0.1:7701", "*:9105"):
        assert str(parse_address(text)) == text
    assert parse_address(str(Address(None, 5))) == Address(None, 5)
