"""Cluster membership: the [cluster] and [remotify] tables of the node's TOML file.

    [cluster]
    name = "lab"
    key_dir = "keys"                # this node's private key is keys/<its name>.key
                                    # (the default; relative to the config file's directory)
    idle_timeout = 30               # seconds (optional; these are the defaults)
    keepalive = 2
    request_timeout = 5
    reconnect_delay = 0.5           # first retry; doubles up to reconnect_max
    reconnect_max = 5
    tls_cert = "a.pem"              # optional; all three or none
    tls_key = "a.key"
    tls_ca = "ca.pem"
    [[cluster.node]]
    name = "a"
    number = 0
    address = "127.0.0.1:7701"
    public_key = "…"                # what `ramster keygen a` prints (base64, 32 bytes)
    [remotify]
    persistent = true
    ephemeral = true
    targets = ["b"]                 # default: every other node
    replicas = 1
    selfshrink = true

The file is the same on every node, so everything that can be wrong with it
is checked here, the same way everywhere: a file that one node accepts is
accepted by all of them. The only per-node facts are which node is local and
its private key, which must exist and match the local node's public_key.

Every node must have a public_key: a cluster whose nodes cannot prove who
they are is refused, with the command that makes the keys. (An earlier
version shared one `secret_file` among all nodes; it is refused with a
message saying what replaces it, see ramster.remote.session for why.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config import ConfigError, read_toml
from ..units import format_address, parse_address
from . import keys
from .wire import MAX_CLUSTER_NAME, MAX_NODE_NUMBER

MAX_NODE_NAME = 64  # R2NM_MAX_NAME_LEN
DEFAULT_KEY_DIR = "keys"
_CLUSTER_KEYS = ("name", "key_dir", "node", "idle_timeout", "keepalive", "request_timeout",
                 "reconnect_delay", "reconnect_max", "tls_cert", "tls_key", "tls_ca")
_NODE_KEYS = ("name", "number", "address", "public_key")
_REMOTIFY_KEYS = ("persistent", "ephemeral", "targets", "replicas", "selfshrink")
_TIMEOUTS = {"idle_timeout": 30.0, "keepalive": 2.0, "request_timeout": 5.0,
             "reconnect_delay": 0.5, "reconnect_max": 5.0}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    number: int
    host: str
    port: int
    public_key: bytes = field(default=b"", repr=False)  # Ed25519, 32 raw bytes

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@dataclass
class ClusterConfig:
    name: str
    local: NodeSpec
    nodes: list[NodeSpec]  # every node, the local one included, by number
    targets: list[NodeSpec]  # where this node remotifies to (never itself)
    replicas: int  # remote copies of each persistent page, as configured
    private_key: Ed25519PrivateKey = field(repr=False)  # the local node's; its public half is local.public_key
    persistent: bool = True
    ephemeral: bool = True
    selfshrink: bool = True
    idle_timeout: float = 30.0
    keepalive: float = 2.0
    request_timeout: float = 5.0
    reconnect_delay: float = 0.5
    reconnect_max: float = 5.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    source: Path | None = None
    key_file: Path | None = None  # where private_key was read from

    @property
    def peers(self) -> list[NodeSpec]:
        """Every node but the local one."""
        return [n for n in self.nodes if n.number != self.local.number]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def node(self, number: int) -> NodeSpec | None:
        for n in self.nodes:
            if n.number == number:
                return n
        return None



def _table(doc: dict, key: str, where: str, required: bool) -> dict:
    t = doc.get(key)
    if t is None:
        if required:
            raise ConfigError(f"{where}: no [{key}] table")
        return {}
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: '{key}' must be a table ([{key}])")
    return t


def _no_unknown(t: dict, known: tuple, where: str) -> None:
    unknown = sorted(set(t) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")


def _bool(t: dict, key: str, default: bool, where: str) -> bool:
    v = t.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: {key} must be true or false, not {v!r}")
    return v


def _seconds(t: dict, key: str, where: str) -> float:
    v = t.get(key, _TIMEOUTS[key])
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
        raise ConfigError(f"{where}: {key} must be a positive number of seconds, not {v!r}")
    return float(v)


def _file(base: Path, value, key: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty path")
    # relative paths mean "beside the config file", wherever ramster is started from
    return base / Path(value).expanduser()


def _keygen_hint(name: str, path: Path | None) -> str:
    return f"ramster keygen {name}" + (f" --config {path}" if path is not None else "")


def _nodes(cluster: dict, where: str, path: Path | None) -> list[NodeSpec]:
    tables = cluster.get("node")
    if tables is None:
        raise ConfigError(f"{where}: no nodes; add [[cluster.node]] tables")
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: nodes must be [[cluster.node]] tables")
    nodes: list[NodeSpec] = []
    by_name: set[str] = set()
    by_number: dict[int, str] = {}
    by_address: dict[tuple[str, int], str] = {}
    by_key: dict[bytes, str] = {}
    for i, t in enumerate(tables, 1):
        w = f"{where}: [[cluster.node]] #{i}"
        _no_unknown(t, _NODE_KEYS, w)
        for key in ("name", "number", "address"):
            if key not in t:
                raise ConfigError(f"{w}: missing {key!r}")
        name, number, address = t["name"], t["number"], t["address"]
        if not isinstance(name, str) or not name or len(name) > MAX_NODE_NAME:
            raise ConfigError(f"{w}: name must be a string of 1 to {MAX_NODE_NAME} characters")
        if any(c in name for c in "/\\\0") or name in (".", ".."):
            # the name is also the name of the node's key file
            raise ConfigError(f"{w}: name {name!r} must not contain '/', '\\' or NUL, nor be '.' or '..'")
        w = f"{where}: node {name!r}"
        if "public_key" not in t:
            raise ConfigError(f"{w} has no public_key, so it could not prove who it is; run "
                              f"`{_keygen_hint(name, path)}` on that node and add the line it prints "
                              f"to the node's [[cluster.node]] table")
        try:
            public_key = keys.parse_public_key(t["public_key"])
        except keys.BadKey as e:
            raise ConfigError(f"{w}: public_key {e}") from None
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_NODE_NUMBER:
            raise ConfigError(f"{w}: number {number!r} is outside 0..{MAX_NODE_NUMBER}")
        if not isinstance(address, str):
            raise ConfigError(f"{w}: invalid address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:7701)")
        try:
            host, port, _ = parse_address(address, f"address of node {name!r}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if port == 0:
            raise ConfigError(f"{w}: address {address!r} has port 0; peers need a fixed port")
        if host is None:
            raise ConfigError(f"{w}: address {address!r} must name one host that peers can reach")
        if name in by_name:
            raise ConfigError(f"{where}: duplicate node name {name!r}")
        if number in by_number:
            raise ConfigError(f"{where}: nodes {by_number[number]!r} and {name!r} have the same number {number}")
        key = (host.lower(), port)
        if key in by_address:
            raise ConfigError(f"{where}: nodes {by_address[key]!r} and {name!r} have the same address {address}")
        if public_key in by_key:
            # either could then act as the other
            raise ConfigError(f"{where}: nodes {by_key[public_key]!r} and {name!r} have the same public_key; "
                              f"each node needs its own key")
        by_name.add(name)
        by_number[number] = name
        by_address[key] = name
        by_key[public_key] = name
        nodes.append(NodeSpec(name, number, host, port, public_key))
    return sorted(nodes, key=lambda n: n.number)


def _private_key(key_dir: Path, local: NodeSpec, where: str, path: Path | None) -> tuple[Ed25519PrivateKey, Path]:
    key_file = key_dir / f"{local.name}.key"
    try:
        key = keys.read_private_key(key_file)
    except keys.BadKey as e:
        hint = f"; make one with `{_keygen_hint(local.name, path)}`" if not key_file.exists() else ""
        raise ConfigError(f"{where}: node {local.name!r}: {e}{hint}") from None
    if keys.public_bytes(key) != local.public_key:
        raise ConfigError(f"{where}: private key {key_file} does not match node {local.name!r}'s public_key "
                          f"(its public key is {keys.public_key_text(key)})")
    return key, key_file


def load_cluster(source: str | os.PathLike | dict, local_name: str, *,
                 base_dir: str | os.PathLike | None = None) -> ClusterConfig:
    """The cluster as seen from node `local_name`; ConfigError (one line) on any mistake.

    `source` is a TOML file or an already parsed document. Relative paths are
    resolved against the file's directory, or `base_dir` (default: the
    current directory) for a document.
    """
    if isinstance(source, dict):
        doc, path = source, None
        where = "cluster config"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        doc = read_toml(path)
        where = f"config file {path}"
        base = Path(base_dir) if base_dir is not None else path.resolve().parent

    cluster = _table(doc, "cluster", where, required=True)
    remotify = _table(doc, "remotify", where, required=False)
    if "secret_file" in cluster:
        raise ConfigError(f"{where}: [cluster] secret_file is no longer used: each node proves who it is with "
                          f"its own key (public_key in its [[cluster.node]] table, made by `ramster keygen`); "
                          f"remove secret_file")
    _no_unknown(cluster, _CLUSTER_KEYS, f"{where}: [cluster]")
    _no_unknown(remotify, _REMOTIFY_KEYS, f"{where}: [remotify]")

    name = cluster.get("name")
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_CLUSTER_NAME:
        raise ConfigError(f"{where}: [cluster] needs a name of 1 to {MAX_CLUSTER_NAME} bytes")

    nodes = _nodes(cluster, where, path)
    by_name = {n.name: n for n in nodes}
    if local_name not in by_name:
        raise ConfigError(f"{where}: no node named {local_name!r} (nodes: {', '.join(by_name)})")
    local = by_name[local_name]

    key_dir = _file(base, cluster.get("key_dir", DEFAULT_KEY_DIR), "key_dir", where)
    private_key, key_file = _private_key(key_dir, local, where, path)

    timeouts = {k: _seconds(cluster, k, where) for k in _TIMEOUTS}
    if timeouts["keepalive"] >= timeouts["idle_timeout"]:
        raise ConfigError(f"{where}: keepalive ({timeouts['keepalive']:g} s) must be shorter than "
                          f"idle_timeout ({timeouts['idle_timeout']:g} s)")
    if timeouts["reconnect_max"] < timeouts["reconnect_delay"]:
        raise ConfigError(f"{where}: reconnect_max must not be shorter than reconnect_delay")

    tls_given = [k for k in ("tls_cert", "tls_key", "tls_ca") if k in cluster]
    tls = {"tls_cert": None, "tls_key": None, "tls_ca": None}
    if tls_given:
        if len(tls_given) != 3:
            missing = sorted({"tls_cert", "tls_key", "tls_ca"} - set(tls_given))
            raise ConfigError(f"{where}: TLS needs tls_cert, tls_key and tls_ca; {missing[0]} is missing")
        for k in tls:
            p = _file(base, cluster[k], k, where)
            if not p.is_file() or not os.access(p, os.R_OK):
                raise ConfigError(f"{where}: {k} {p} is not a readable file")
            tls[k] = p

    targets_v = remotify.get("targets")
    if targets_v is None:
        configured = [n.name for n in nodes]
    else:
        if not isinstance(targets_v, list) or not all(isinstance(x, str) for x in targets_v):
            raise ConfigError(f"{where}: [remotify] targets must be a list of node names")
        configured = list(targets_v)
        for t in configured:
            if t not in by_name:
                raise ConfigError(f"{where}: [remotify] target {t!r} is not a node of the cluster")
        if len(set(configured)) != len(configured):
            raise ConfigError(f"{where}: [remotify] targets name the same node twice")
        if not configured:
            raise ConfigError(f"{where}: [remotify] targets is empty; leave it out to use every other node")
    replicas = remotify.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"{where}: [remotify] replicas must be a whole number of at least 1, not {replicas!r}")
    # With the default (everyone), a node can use all nodes but itself.
    usable = len(configured) if targets_v is not None else len(nodes) - 1
    if replicas > usable:
        raise ConfigError(f"{where}: [remotify] replicas = {replicas} but there are only {usable} targets")

    return ClusterConfig(
        name=name,
        local=local,
        nodes=nodes,
        targets=[by_name[t] for t in configured if t != local_name],
        replicas=replicas,
        private_key=private_key,
        persistent=_bool(remotify, "persistent", True, f"{where}: [remotify]"),
        ephemeral=_bool(remotify, "ephemeral", True, f"{where}: [remotify]"),
        selfshrink=_bool(remotify, "selfshrink", True, f"{where}: [remotify]"),
        **timeouts,
        **tls,
        source=path,
        key_file=key_file,
    )
