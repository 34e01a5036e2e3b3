"""Real `ramster node` processes on loopback, each with its own copy of the cluster file.

Every node reads the cluster TOML itself, so each gets its own copy in which
only addresses differ: the dialling node (the higher number) is told the
listener's address is a proxy's port, while the listener binds its real port
from its own copy. Everything else (name, public keys, timeouts, remotify)
must be identical, and ClusterFiles builds one document and only swaps
addresses per reader, so it stays so when more settings are added. A node's
private key is written into its own directory only (key_dir "keys").
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ramster.remote.keys import node_keys
from support import RAMSTER, NodeProcess, free_port

from .proxy import LinkProxy, ProxyLoop

# Small timeouts keep pauses short: a pause longer than idle_timeout costs a few seconds.
FAST_TIMEOUTS = {"request_timeout": 1.0, "keepalive": 0.25, "idle_timeout": 2.0,
                 "reconnect_delay": 0.1, "reconnect_max": 0.5}
STATS_TIMEOUT = 2.0


# ---- TOML -----------------------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def toml_dumps(doc: dict) -> str:
    """Tables of scalars and arrays of tables, one level of nesting: all a cluster file has."""
    lines: list[str] = []

    def table(prefix: str, t: dict, array: bool) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subs = []
        for k, v in t.items():
            if isinstance(v, dict):
                subs.append((f"{prefix}.{k}", [v], False))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                subs.append((f"{prefix}.{k}", v, True))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for name, tables, arr in subs:
            for sub in tables:
                table(name, sub, arr)

    for name, t in doc.items():
        table(name, t, False)
    return "\n".join(lines) + "\n"


# ---- the cluster's files ------------------------------------------------------------------------------

@dataclass
class NodeDef:
    name: str
    number: int
    memory: str
    exports: list[str] = field(default_factory=list)  # --export specs; relative paths: the node's dir
    compressor: str | None = None
    port: int = 0  # peer port it listens on (0: pick a free one)
    args: list[str] = field(default_factory=list)  # more flags for `ramster node`


class ClusterFiles:
    """One cluster document, written once per node with that node's view of the addresses.

    `cluster_fields` go into [cluster] and `node_fields[name]` into that node's
    [[cluster.node]] table on every copy (its public_key); `node_files[name]`
    are written into that node's own directory only, as {relative path: bytes}
    with mode 0600 (what a node alone may hold; its private key is made there
    by ramster's own node_keys()).
    """

    def __init__(self, root: Path, nodes: list[NodeDef], replicas: int = 1, *, name: str = "fault",
                 timeouts: dict | None = None, remotify: dict | None = None):
        self.root = Path(root)
        self.nodes = {n.name: n for n in nodes}
        for n in nodes:
            if not n.port:
                n.port = free_port()
        self.name = name
        self.replicas = replicas
        self.timeouts = dict(FAST_TIMEOUTS if timeouts is None else timeouts)
        self.remotify = {"persistent": True, "ephemeral": True, "replicas": replicas, **(remotify or {})}
        self.cluster_fields: dict = {}
        self.node_fields: dict[str, dict] = {n.name: {} for n in nodes}
        self.node_files: dict[str, dict[str, bytes]] = {n.name: {} for n in nodes}
        self.routes: dict[tuple[str, str], int] = {}  # (reader, target) -> port the reader dials
        self.cluster_fields["key_dir"] = "keys"
        for n in nodes:
            # each node's private key in its own directory only (a node must not hold another's)
            self.node_fields[n.name]["public_key"] = node_keys(self.dir(n.name) / "keys", [n.name])[n.name]

    def dir(self, node: str) -> Path:
        d = self.root / node
        d.mkdir(parents=True, exist_ok=True)
        return d

    def route(self, reader: str, target: str, port: int) -> None:
        """In `reader`'s copy, `target` lives at 127.0.0.1:`port` (a proxy)."""
        self.routes[(reader, target)] = port

    def address(self, reader: str, target: str) -> str:
        return f"127.0.0.1:{self.routes.get((reader, target), self.nodes[target].port)}"

    def document(self, reader: str) -> dict:
        cluster = {"name": self.name, **self.timeouts, **self.cluster_fields}
        cluster["node"] = [{"name": n.name, "number": n.number, "address": self.address(reader, n.name),
                            **self.node_fields[n.name]}
                           for n in sorted(self.nodes.values(), key=lambda n: n.number)]
        return {"cluster": cluster, "remotify": dict(self.remotify)}

    def write(self, reader: str) -> Path:
        d = self.dir(reader)
        for rel, data in self.node_files[reader].items():
            p = d / rel
            p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a node refuses a key others can read
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        path = d / "cluster.toml"
        path.write_text(toml_dumps(self.document(reader)))
        return path


# ---- node processes ----------------------------------------------------------------------------------

class NodeProc(NodeProcess):
    """One node of the cluster: started, killed, paused, restarted on the same files and ports.

    Not started at construction (Cluster.start() starts nodes side by side, then waits);
    every start writes this node's copy of the cluster file again, and may take another
    compressor (a node restarted with other settings)."""

    stats_timeout = STATS_TIMEOUT

    def __init__(self, files: ClusterFiles, spec: NodeDef):
        self.files = files
        self.spec = spec
        self.compressor = spec.compressor
        super().__init__(files.dir(spec.name), name=spec.name, start=False)

    def command(self) -> list[str]:
        s = self.spec
        cmd = [*RAMSTER, "node", "--config", str(self.files.write(s.name)), "--name", s.name,
               "--memory", s.memory, "--listen", f"unix:{self.sock}",
               "--metrics", f"127.0.0.1:{self.port}", "--log-level", "info"]
        if self.compressor:
            cmd += ["--compressor", self.compressor]
        for e in s.exports:
            cmd += ["--export", e]
        return cmd + list(s.args)

    def start(self, compressor: str | None = None) -> None:
        """Start the process (wait_ready() waits for it); the log is appended across restarts."""
        self.compressor = compressor or self.spec.compressor
        super().start()

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean stop: in-flight requests finish, the swap disk gets every page); kill if slow."""
        return self.stop(timeout)

    def log(self) -> str:
        return self.stderr()


class Cluster:
    """Nodes, and a proxy on every link (dialler -> listener), so any link can be broken."""

    def __init__(self, root: Path, nodes: list[NodeDef], replicas: int = 1, proxied: bool = True, **kw):
        self.files = ClusterFiles(root, nodes, replicas, **kw)
        self.proxies = ProxyLoop()
        self.links: dict[frozenset, LinkProxy] = {}
        self.nodes: dict[str, NodeProc] = {}
        try:
            if proxied:
                by_number = sorted(nodes, key=lambda n: n.number)
                for i, lo in enumerate(by_number):
                    for hi in by_number[i + 1:]:
                        p = self.proxies.proxy(f"{hi.name}->{lo.name}", lo.port)
                        self.files.route(hi.name, lo.name, p.port)
                        self.links[frozenset((hi.name, lo.name))] = p
            for n in nodes:
                self.nodes[n.name] = NodeProc(self.files, n)
        except BaseException:
            self.proxies.close()
            raise

    def __getitem__(self, name: str) -> NodeProc:
        return self.nodes[name]

    def link(self, x: str, y: str) -> LinkProxy:
        return self.links[frozenset((x, y))]

    def start(self, names: list[str] | None = None, timeout: float = 30.0) -> None:
        """Start nodes side by side (Python start-up is most of the wait), then wait for each."""
        names = names or list(self.nodes)
        for n in names:
            self.nodes[n].start()
        deadline = time.monotonic() + timeout
        for n in names:
            self.nodes[n].wait_ready(deadline)

    def connected(self, names: list[str] | None = None) -> bool:
        """Every running node among `names` sees every other running one connected."""
        names = [n for n in (names or list(self.nodes)) if self.nodes[n].alive() and not self.nodes[n].paused]
        for n in names:
            try:
                peers = {p["name"]: p["connected"] for p in self.nodes[n].stats()["peers"]}
            except OSError:
                return False
            if not all(peers.get(m) for m in names if m != n):
                return False
        return True

    def wait_connected(self, timeout: float = 15.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.connected(names):
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster did not (re)connect within {timeout:g} s:\n{self.describe()}")
            time.sleep(0.05)

    def describe(self) -> str:
        out = []
        for n, node in self.nodes.items():
            try:
                peers = ", ".join(f"{p['name']}:{'up' if p['connected'] else 'down'}"
                                  for p in node.stats(1.0)["peers"])
            except OSError as e:
                peers = f"no stats ({e})"
            state = "paused" if node.paused else ("running" if node.alive() else "stopped")
            out.append(f"  {n} ({state}): {peers}")
        return "\n".join(out)

    def tracebacks(self) -> dict[str, str]:
        """The first traceback each node logged, if any: a node must not crash inside."""
        out = {}
        for n, node in self.nodes.items():
            text = node.log()
            i = text.find("Traceback")
            if i >= 0:
                out[n] = text[max(0, text.rfind("\n", 0, max(0, i - 300))):i + 2500]
        return out

    def stop(self) -> None:
        for node in self.nodes.values():
            try:
                node.terminate(timeout=5)
            except Exception:
                pass
        self.proxies.close()
