"""The control socket: where `ramster ctl` reaches a running node.

A Unix stream socket, created mode 0600 (so the file system already keeps
other users out), and on every connection the kernel's word on who is
calling (SO_PEERCRED): only the node's own uid and root are served. Anyone
else gets one refusal line and the connection closes; they are counted
(control.requests_refused). A Unix socket cannot be reached from the
network, so the endpoint is local by construction, with no port to guard.

Each connection carries requests and replies one JSON line each
(ramster.control_protocol, which also cuts the byte stream into lines); the
node runs one request at a time, in the order they come (ramster.control
holds the lock), on the loop that serves everything else.

Where the socket is, unless `--control PATH` says (`--control off`: none),
decided by the first listen address:

    unix:P                              P.ctl, beside it
    HOST:N (TCP)                        DIR/ramster-N.ctl, where DIR is
        $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else $XDG_RUNTIME_DIR,
        else /run/ramster for root, else /tmp/ramster-UID (made 0700)

so two nodes on one machine never share one, and `ramster ctl` without
--control finds a node started without --listen. A socket file left by a
node that died is replaced; one a running node answers on is an error.
The file is removed when the node stops.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from pathlib import Path

from .control_protocol import PROTOCOL, REFUSED, LineBuffer, ProtocolError, decode_request, encode_reply, refusal
from .units import parse_address

log = logging.getLogger("ramster.control")

IDLE_TIMEOUT = 300.0  # seconds a connection may wait between requests
_UCRED = struct.Struct("3i")  # pid, uid, gid


def runtime_dir() -> Path:
    """Where a node puts its control socket when its listen address is TCP."""
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        v = os.environ.get(var, "").split(":")[0]
        if v:
            return Path(v)
    if os.getuid() == 0:
        return Path("/run/ramster")
    return Path(f"/tmp/ramster-{os.getuid()}")


def default_path(listen: list[str]) -> Path:
    """The control socket of a node listening on `listen` (see the module comment)."""
    _, port, path = parse_address(listen[0], unix=True)
    if path is not None:
        return Path(path + ".ctl")
    return runtime_dir() / f"ramster-{port}.ctl"


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def allowed(uid: int) -> bool:
    """The node's own user and root may steer it."""
    return uid in (0, os.getuid())


def _private_dir(d: Path) -> None:
    """/tmp/ramster-UID (or root's /run/ramster): made 0700 if missing; the one in
    /tmp is refused unless ours and private (anyone may create names there)."""
    if d == Path("/run/ramster") and os.getuid() == 0:
        d.mkdir(mode=0o700, exist_ok=True)
        return
    if d != Path(f"/tmp/ramster-{os.getuid()}"):
        return
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = d.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{d} is not a private directory of this user")


def _in_use(path: Path) -> bool:
    """True if a process answers on the socket at `path`; False for a file left by a dead one."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
    return True


class ControlServer:
    """Serves `control` (a ramster.control.Control) on a Unix socket at `path`."""

    def __init__(self, control, path: Path):
        self.control = control
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind; OSError (its strerror one line) when the path is taken or unusable."""
        path = self.path
        _private_dir(path.parent)
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            if _in_use(path):
                raise OSError(errno.EADDRINUSE, f"a running node answers on {path}")
            path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._ino = path.stat().st_ino

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        try:  # only our own file: another node may have taken the path since
            if self.path.stat().st_ino == self._ino:
                self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            if not allowed(uid):
                self.control.requests_refused += 1
                log.warning("control: refused a connection from uid %d", uid)
                writer.write(encode_reply(refusal(REFUSED, f"permission denied: uid {uid} may not control "
                                                           f"this node (only uid {os.getuid()} and root)")))
                await writer.drain()
                return
            lines = LineBuffer()
            while True:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                if not data:
                    return
                try:
                    batch = lines.feed(data)
                except ProtocolError as e:
                    writer.write(encode_reply(refusal(PROTOCOL, str(e))))
                    await writer.drain()
                    return
                for line in batch:
                    try:
                        reply = await self.control.handle(decode_request(line))
                    except ProtocolError as e:
                        reply = refusal(PROTOCOL, str(e))
                    writer.write(encode_reply(reply))
                    await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
