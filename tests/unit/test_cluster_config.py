"""Loading and validating the [cluster] / [remotify] configuration."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ramster.config import ConfigError
from ramster.remote.cluster import ClusterConfig, NodeSpec, load_cluster

GOOD = """
[cluster]
name = "lab"
secret_file = "cluster.key"
[[cluster.node]]
name = "a"
number = 0
address = "127.0.0.1:7701"
[[cluster.node]]
name = "b"
number = 1
address = "127.0.0.1:7702"
[[cluster.node]]
name = "c"
number = 5
address = "127.0.0.1:7703"
[remotify]
persistent = true
ephemeral = false
targets = ["b", "c"]
replicas = 2
"""


@pytest.fixture
def cfgdir(tmp_path):
    (tmp_path / "cluster.key").write_bytes(b"0123456789abcdef0123456789abcdef\n")
    (tmp_path / "ramster.toml").write_text(GOOD)
    return tmp_path


def doc(**changes) -> dict:
    """The GOOD document as a dict, with top-level tables patched."""
    import tomllib
    d = tomllib.loads(GOOD)
    for table, values in changes.items():
        d[table].update(values)
    return d


def load(d, tmp_path, name="a"):
    return load_cluster(d, name, base_dir=tmp_path)


def error(d, tmp_path, name="a") -> str:
    with pytest.raises(ConfigError) as ei:
        load(d, tmp_path, name)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_good_file(cfgdir):
    c = load_cluster(cfgdir / "ramster.toml", "b")
    assert isinstance(c, ClusterConfig)
    assert c.name == "lab"
    assert c.local == NodeSpec("b", 1, "127.0.0.1", 7702)
    assert [n.name for n in c.nodes] == ["a", "b", "c"]
    assert [n.name for n in c.peers] == ["a", "c"]
    # the local node is never its own target
    assert [n.name for n in c.targets] == ["c"]
    assert c.replicas == 2
    assert (c.persistent, c.ephemeral, c.selfshrink) == (True, False, True)
    assert c.secret == b"0123456789abcdef0123456789abcdef"
    assert (c.idle_timeout, c.keepalive, c.request_timeout) == (30.0, 2.0, 5.0)
    assert (c.reconnect_delay, c.reconnect_max) == (0.5, 5.0)
    assert not c.tls and c.tls_cert is None
    assert c.node(5).name == "c" and c.node(4) is None
    assert "0123" not in repr(c)  # the secret stays out of logs


def test_secret_relative_to_config_file_not_cwd(cfgdir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_cluster(cfgdir / "ramster.toml", "a").secret.startswith(b"0123")


def test_defaults(cfgdir):
    d = doc()
    del d["remotify"]
    c = load(d, cfgdir, "c")
    assert [n.name for n in c.targets] == ["a", "b"]
    assert (c.replicas, c.persistent, c.ephemeral, c.selfshrink) == (1, True, True, True)


def test_timeouts_and_tls(cfgdir):
    for f in ("a.pem", "a.key", "ca.pem"):
        (cfgdir / f).write_text("x")
    d = doc(cluster={"idle_timeout": 10, "keepalive": 0.5, "request_timeout": 1.5, "reconnect_delay": 0.1,
                     "reconnect_max": 2, "tls_cert": "a.pem", "tls_key": "a.key", "tls_ca": "ca.pem"},
            remotify={"selfshrink": False})
    c = load(d, cfgdir)
    assert (c.idle_timeout, c.keepalive, c.request_timeout, c.reconnect_delay, c.reconnect_max) == \
        (10.0, 0.5, 1.5, 0.1, 2.0)
    assert c.tls and c.tls_cert == cfgdir / "a.pem" and c.tls_ca == cfgdir / "ca.pem"
    assert c.selfshrink is False


def _node(d, i, **kv):
    d = copy.deepcopy(d)
    d["cluster"]["node"][i].update(kv)
    return d


def test_duplicate_number(cfgdir):
    assert "same number 0" in error(_node(doc(), 1, number=0), cfgdir)


def test_duplicate_name(cfgdir):
    assert "duplicate node name 'a'" in error(_node(doc(), 1, name="a"), cfgdir)


def test_duplicate_address(cfgdir):
    assert "same address" in error(_node(doc(), 2, address="127.0.0.1:7701"), cfgdir)


def test_unknown_target(cfgdir):
    assert "target 'z'" in error(doc(remotify={"targets": ["b", "z"]}), cfgdir)


def test_replicas_larger_than_targets(cfgdir):
    assert "replicas = 3" in error(doc(remotify={"replicas": 3}), cfgdir)


def test_replicas_larger_than_default_targets(cfgdir):
    d = doc(remotify={"replicas": 3})
    del d["remotify"]["targets"]
    assert "only 2 targets" in error(d, cfgdir)


def test_replicas_below_one(cfgdir):
    assert "at least 1" in error(doc(remotify={"replicas": 0}), cfgdir)


def test_missing_secret_file_key(cfgdir):
    d = doc()
    del d["cluster"]["secret_file"]
    assert "secret_file" in error(d, cfgdir)


def test_secret_file_does_not_exist(cfgdir):
    assert "does not exist" in error(doc(cluster={"secret_file": "nope.key"}), cfgdir)


def test_secret_file_empty(cfgdir):
    (cfgdir / "empty.key").write_bytes(b" \n")
    assert "is empty" in error(doc(cluster={"secret_file": "empty.key"}), cfgdir)


def test_secret_file_unreadable(cfgdir, monkeypatch):
    # chmod 0 does not stop root, so make the read itself fail
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "cluster.key":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert "not readable (Permission denied)" in error(doc(), cfgdir)


def test_secret_file_is_a_directory(cfgdir):
    (cfgdir / "keydir").mkdir()
    assert "is a directory" in error(doc(cluster={"secret_file": "keydir"}), cfgdir)


def test_unknown_local_name(cfgdir):
    assert "no node named 'zz'" in error(doc(), cfgdir, name="zz")


@pytest.mark.parametrize("number", [-1, 16, 255, "1", True])
def test_node_number_out_of_range(cfgdir, number):
    assert "outside 0..15" in error(_node(doc(), 2, number=number), cfgdir)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:99999", "::1:7000", "bad host:1", 7701,
                                     "127.0.0.1:0", "*:7701"])
def test_bad_address(cfgdir, address):
    assert "address" in error(_node(doc(), 2, address=address), cfgdir)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_cluster(tmp_path / "none.toml", "a")


def test_no_cluster_table(cfgdir):
    assert "[cluster]" in error({"node": {}}, cfgdir)


def test_no_nodes(cfgdir):
    d = doc()
    del d["cluster"]["node"]
    assert "no nodes" in error(d, cfgdir)


def test_unknown_key(cfgdir):
    assert "unknown key 'idle'" in error(doc(cluster={"idle": 3}), cfgdir)
    assert "unknown key 'target'" in error(doc(remotify={"target": "b"}), cfgdir)
    assert "unknown key 'port'" in error(_node(doc(), 0, port=3), cfgdir)


def test_missing_node_key(cfgdir):
    d = doc()
    del d["cluster"]["node"][1]["address"]
    assert "missing 'address'" in error(d, cfgdir)


def test_keepalive_must_be_shorter_than_idle(cfgdir):
    assert "shorter than idle_timeout" in error(doc(cluster={"keepalive": 30}), cfgdir)


@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_bad_timeout(cfgdir, value):
    assert "request_timeout" in error(doc(cluster={"request_timeout": value}), cfgdir)


def test_tls_needs_all_three(cfgdir):
    (cfgdir / "a.pem").write_text("x")
    assert "tls_key" in error(doc(cluster={"tls_cert": "a.pem"}), cfgdir)


def test_tls_file_missing(cfgdir):
    (cfgdir / "a.pem").write_text("x")
    (cfgdir / "a.key").write_text("x")
    assert "tls_ca" in error(doc(cluster={"tls_cert": "a.pem", "tls_key": "a.key", "tls_ca": "no.pem"}), cfgdir)


def test_duplicate_target(cfgdir):
    assert "twice" in error(doc(remotify={"targets": ["b", "b"]}), cfgdir)


def test_bad_flag(cfgdir):
    assert "true or false" in error(doc(remotify={"persistent": 1}), cfgdir)


def test_cluster_name_required(cfgdir):
    assert "name" in error(doc(cluster={"name": ""}), cfgdir)
