"""`ramster ctl`: change a running node's settings, or make it act, without a restart.

It sends one request to the node's control socket (ramster.control_server
says where that is and who may use it) and prints the one-line answer; the
verbs and their arguments come from ramster.control_protocol's VERBS table,
the same one the node checks requests against. What each verb does to the
node is ramster.control's business.

Exit status: 0 done (or already so); 1 no node answers on the socket or it
could not do it; 2 a mistake of the caller's: a bad value, an unknown peer,
permission denied.
"""
from __future__ import annotations

import argparse
import socket
import sys

from ..config import DEFAULT_LISTEN
from . import UserError

TIMEOUT = 120.0  # a selfshrink, a writeback or a recompression moves pages before it answers

DESCRIPTION = """\
Change a running node's settings, or make it act, through its control socket:
the settings the seed exposed in sysfs (remotify switches, targets, a peer
marked down or up), zram's verbs (memory limit, mark idle, write back,
recompress) and a
reload of the config file. Each change is logged by the node ("old -> new"),
counted in /stats under control.*, and shown in /stats (zcache.max_pageframes,
ramster.*_remotify_enable, each peer's target and down).

A ctl change stays in force across SIGHUP reloads until that setting is
edited in the config file: then the file's new value wins.
"""

EPILOG = """\
the control socket: --control PATH, or where the node puts it by default,
after its first listen address: PATH.ctl for unix:PATH, else ramster-PORT.ctl in
$RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, /run/ramster (root) or /tmp/ramster-UID.
The node's banner prints it. Only the node's user and root may use it.

examples:
  ramster ctl show
  ramster ctl memory 2G
  ramster ctl --control /run/ramster.sock.ctl log-level debug
  ramster ctl remotify pers off
  ramster ctl pin b
  ramster ctl peer c down
  ramster ctl selfshrink now 1000
  ramster ctl mark-idle && ramster ctl writeback idle
  ramster ctl mark-idle && ramster ctl recompress
  ramster ctl compact
"""


def add_parser(sub) -> argparse.ArgumentParser:
    from ..control_protocol import VERBS

    p = sub.add_parser("ctl", help="change a running node's settings (memory, remotify, peers, ...)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--control", metavar="PATH",
                   help="the node's control socket (default: the one of a node listening on "
                        f"{DEFAULT_LISTEN})")
    p.add_argument("--json", action="store_true", help="print the node's reply as JSON")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for v in VERBS.values():
        vp = verbs.add_parser(v.name, help=v.help, description=v.help)
        if v.max_args:
            vp.add_argument("args", nargs="*", metavar=v.usage or "ARG")
        vp.set_defaults(args=[])
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from ..control_protocol import INVALID, REFUSED, VERBS, ProtocolError, decode_reply, encode_request

    v = VERBS[args.verb]
    words = list(getattr(args, "args", []) or [])
    if not v.min_args <= len(words) <= v.max_args:
        raise UserError(f"usage: ramster ctl {v.name} {v.usage}".rstrip())
    path = args.control or str(_default_path())
    try:
        line = _ask(path, encode_request(v.name, words))
    except _NotRunning as e:
        print(f"ramster ctl: {e}", file=sys.stderr)
        return 1
    try:
        reply = decode_reply(line)
    except ProtocolError as e:
        print(f"ramster ctl: {path} answered something that is not a ramster reply: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(line.decode().rstrip("\n"))
    if not reply.ok:
        if reply.kind in (INVALID, REFUSED):
            raise UserError(reply.message)
        print(f"ramster ctl: {reply.message}", file=sys.stderr)
        return 1
    if not args.json and reply.message:
        print(reply.message)
    return 0


class _NotRunning(Exception):
    pass


def _default_path():
    from ..control_server import default_path

    return default_path([DEFAULT_LISTEN])


def _ask(path: str, request: bytes) -> bytes:
    """One request, one reply line; _NotRunning (one line) when nothing answers at `path`."""
    from ..control_protocol import MAX_LINE

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise _NotRunning(f"no node running with control socket {path}; start one with `ramster node` "
                              f"or pass --control PATH (the node's banner prints it)") from None
        except PermissionError:
            raise UserError(f"permission denied: {path} belongs to another user (run as the node's "
                            f"user or root)") from None
        except OSError as e:
            raise _NotRunning(f"cannot reach {path}: {e.strerror or e}") from None
        try:
            try:
                s.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # a node that refuses the caller answers and closes at once: read why
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_LINE + 1:
                    break
        except socket.timeout:
            raise _NotRunning(f"the node at {path} did not answer within {TIMEOUT:.0f} s") from None
        except OSError as e:
            raise _NotRunning(f"lost the connection to {path}: {e.strerror or e}") from None
    if not data:
        raise _NotRunning(f"the node at {path} closed the connection without answering")
    return bytes(data)
