"""The control protocol: what `ramster ctl` and a node's control socket say to each other.

One request per line and one reply per line, each a JSON object encoded as
UTF-8 and ended by "\\n", so a session is readable with `socat` and a reply
can never be confused with the next one:

    -> {"verb": "memory", "args": ["128M"]}
    <- {"ok": true, "message": "memory 64 MiB -> 128 MiB", "result": {...}}
    <- {"ok": false, "kind": "invalid", "error": "invalid memory '12X': ..."}

`args` are the words the user typed after the verb, as text: the node is
the one that knows its peers' names and its machine's memory, so it parses
and checks every value; the client checks only their number, from the same
VERBS table, so `ramster ctl --help` lists exactly what a node accepts. A
reply's `kind` says whose fault a refusal is: "invalid" (a bad value: the
user's), "refused" (the caller may not ask: the user's), "failed" (the node
could not do it), "protocol" (a line that is no request: a bug or a stranger).

This module does no I/O: `decode_request` and `decode_reply` take the bytes
of one line, `LineBuffer` cuts a byte stream into lines with a cap, and the
socket code on either side (ramster.control_server, ramster.cli.ctl) only
moves bytes. A line longer than MAX_LINE is an error, not a reason to buffer
without bound.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_LINE = 64 * 1024  # bytes in one request or reply line, newline excluded
MAX_ARGS = 32

INVALID, REFUSED, FAILED, PROTOCOL = "invalid", "refused", "failed", "protocol"
KINDS = (INVALID, REFUSED, FAILED, PROTOCOL)


@dataclass(frozen=True)
class Verb:
    name: str
    usage: str  # the words after the verb, as --help shows them
    help: str
    min_args: int = 0
    max_args: int = 0


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("show", "", "print the node's runtime settings"),
    Verb("reload", "", "re-read the config file now, as SIGHUP does, and print what changed"),
    Verb("memory", "SIZE", "set the memory budget (e.g. 512M); shrinking evicts cache pages and "
                           "writes back or remotifies swap pages", 1, 1),
    Verb("log-level", "LEVEL", "set the log level (debug, info, warning, error, critical)", 1, 1),
    Verb("remotify", "eph|pers|all on|off", "let the remotify worker move pages of a pool kind to peers, "
                                             "or stop it (the seed's eph/pers_remotify_enable)", 2, 2),
    Verb("pin", "NODE [NODE ...]", "remotify only to these peers (the seed's remote_target_nodenum)",
         1, MAX_ARGS),
    Verb("unpin", "", "remotify to the config file's targets again"),
    Verb("peer", "NODE up|down", "mark a peer down (it gets no new pages and is not asked for its "
                                 "copies) or up again (the seed's manual_node_up)", 2, 2),
    Verb("selfshrink", "[now [PAGES]|on|off]", "bring remote swap pages home into free memory now (at most "
                                                "PAGES), or turn the idle-time selfshrink on or off", 0, 2),
    Verb("mark-idle", "", "mark every page held now idle (zram's `echo all > idle`)"),
    Verb("writeback", "idle|huge [PAGES]", "write idle or uncompressible swap pages to the backing file "
                                           "(zram's `echo idle > writeback`)", 1, 2),
    Verb("recompress", "[PAGES]", "store huge pages and pages idle since the last mark again with the "
                                  "recompression codec where it saves memory; look at most at PAGES "
                                  "(zram's `echo type=idle > recompress`)", 0, 1),
    Verb("compact", "", "move pages out of sparse zspages and free their frames (the dense allocator; "
                        "zbud never moves a page) (zram's `echo 1 > compact`)"),
)}


class ProtocolError(ValueError):
    """A line that is not a well-formed request or reply; the message is one line."""


@dataclass(frozen=True)
class Request:
    verb: str
    args: tuple[str, ...] = ()


@dataclass
class Reply:
    ok: bool
    message: str = ""
    kind: str | None = None  # for a refusal: INVALID, REFUSED, FAILED or PROTOCOL
    result: dict = field(default_factory=dict)


def _line(obj: dict) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
    if len(data) > MAX_LINE + 1:
        raise ProtocolError(f"line of {len(data)} bytes is over the {MAX_LINE}-byte limit")
    return data


def _object(line: bytes, what: str) -> dict:
    if len(line.rstrip(b"\r\n")) > MAX_LINE:
        raise ProtocolError(f"{what} longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj


def encode_request(verb: str, args=()) -> bytes:
    return _line({"verb": verb, "args": list(args)})


def decode_request(line: bytes) -> Request:
    """The request in one line; ProtocolError for anything but a known verb with
    the right number of string arguments."""
    obj = _object(line, "request")
    verb = obj.get("verb")
    args = obj.get("args", [])
    unknown = sorted(set(obj) - {"verb", "args"})
    if unknown:
        raise ProtocolError(f"unknown request field {unknown[0]!r}")
    if not isinstance(verb, str):
        raise ProtocolError("request has no verb")
    v = VERBS.get(verb)
    if v is None:
        raise ProtocolError(f"unknown verb {verb!r} (known: {', '.join(VERBS)})")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ProtocolError("args must be a list of strings")
    if not v.min_args <= len(args) <= v.max_args:
        want = str(v.min_args) if v.min_args == v.max_args else f"{v.min_args} to {v.max_args}"
        raise ProtocolError(f"{verb} takes {want} argument(s), got {len(args)}: usage: {verb} {v.usage}".rstrip())
    return Request(verb, tuple(args))


def encode_reply(reply: Reply) -> bytes:
    obj: dict = {"ok": reply.ok}
    if reply.ok:
        obj["message"] = reply.message
        obj["result"] = reply.result
    else:
        obj["kind"] = reply.kind or FAILED
        obj["error"] = reply.message
    return _line(obj)


def decode_reply(line: bytes) -> Reply:
    obj = _object(line, "reply")
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("reply has no ok field")
    if ok:
        message, result = obj.get("message", ""), obj.get("result", {})
        if not isinstance(message, str) or not isinstance(result, dict):
            raise ProtocolError("reply's message must be a string and its result an object")
        return Reply(True, message, None, result)
    error, kind = obj.get("error"), obj.get("kind")
    if not isinstance(error, str) or kind not in KINDS:
        raise ProtocolError("a refusal needs an error string and a known kind")
    return Reply(False, error, kind)


def ok(message: str, **result) -> Reply:
    return Reply(True, message, None, result)


def refusal(kind: str, message: str) -> Reply:
    return Reply(False, message, kind)


class LineBuffer:
    """Bytes in, complete lines out (without their newline); ProtocolError once a
    line grows past MAX_LINE, so a peer that never sends "\\n" costs bounded memory."""

    def __init__(self, limit: int = MAX_LINE):
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            lines.append(bytes(self._buf[:i]))
            del self._buf[: i + 1]
        if any(len(x) > self.limit for x in lines) or len(self._buf) > self.limit:
            raise ProtocolError(f"line longer than {self.limit} bytes")
        return lines

    @property
    def pending(self) -> int:
        """Bytes of a line not yet ended."""
        return len(self._buf)
