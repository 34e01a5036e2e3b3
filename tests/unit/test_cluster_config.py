"""Loading and validating the [cluster] / [remotify] configuration."""
from __future__ import annotations

import base64
import copy
import os
from pathlib import Path

import pytest

from ramster.config import ConfigError
from ramster.remote import keys
from ramster.remote.clusterconf import ClusterConfig, NodeSpec, load_cluster

# made once: the tests only read them (each test's keys/ directory gets copies)
KEYS = {n: keys.new_private_key() for n in "abc"}
PUB = {n: keys.public_key_text(k) for n, k in KEYS.items()}

GOOD = f"""
[cluster]
name = "lab"
[[cluster.node]]
name = "a"
number = 0
address = "127.0.0.1:7701"
public_key = "{PUB['a']}"
[[cluster.node]]
name = "b"
number = 1
address = "127.0.0.1:7702"
public_key = "{PUB['b']}"
[[cluster.node]]
name = "c"
number = 5
address = "127.0.0.1:7703"
public_key = "{PUB['c']}"
[remotify]
persistent = true
ephemeral = false
targets = ["b", "c"]
replicas = 2
"""


@pytest.fixture
def cfgdir(tmp_path):
    for n, k in KEYS.items():
        keys.write_private_key(tmp_path / "keys" / f"{n}.key", k)
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
    assert c.local == NodeSpec("b", 1, "127.0.0.1", 7702, base64.b64decode(PUB["b"]))
    assert [n.name for n in c.nodes] == ["a", "b", "c"]
    assert [n.name for n in c.peers] == ["a", "c"]
    # the local node is never its own target
    assert [n.name for n in c.targets] == ["c"]
    assert c.replicas == 2
    assert (c.persistent, c.ephemeral, c.selfshrink) == (True, False, True)
    assert c.local.public_key == base64.b64decode(PUB["b"])
    assert [n.public_key for n in c.nodes] == [base64.b64decode(PUB[n]) for n in "abc"]
    assert keys.public_bytes(c.private_key) == c.local.public_key
    assert c.key_file == cfgdir / "keys" / "b.key"
    assert (c.idle_timeout, c.keepalive, c.request_timeout) == (30.0, 2.0, 5.0)
    assert (c.reconnect_delay, c.reconnect_max) == (0.5, 5.0)
    assert not c.tls and c.tls_cert is None
    assert c.node(5).name == "c" and c.node(4) is None
    assert "Private" not in repr(c)  # the private key stays out of logs


def test_key_dir_relative_to_config_file_not_cwd(cfgdir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    c = load_cluster(cfgdir / "ramster.toml", "a")
    assert keys.public_key_text(c.private_key) == PUB["a"]


def test_key_dir_option(cfgdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("etc-ramster")
    (cfgdir / "keys" / "a.key").rename(elsewhere / "a.key")
    c = load(doc(cluster={"key_dir": str(elsewhere)}), cfgdir)
    assert c.key_file == elsewhere / "a.key"
    (cfgdir / "mine").mkdir()
    (elsewhere / "a.key").rename(cfgdir / "mine" / "a.key")
    assert load(doc(cluster={"key_dir": "mine"}), cfgdir).key_file == cfgdir / "mine" / "a.key"


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


# --- keys --------------------------------------------------------------------------------------
def test_a_node_without_public_key_is_refused_with_the_command_that_makes_one(cfgdir):
    d = doc()
    del d["cluster"]["node"][2]["public_key"]
    # every node refuses the file, not only the one without a key: the file is the same everywhere
    msg = error(d, cfgdir, name="a")
    assert "node 'c' has no public_key" in msg and "ramster keygen c" in msg
    with pytest.raises(ConfigError, match=r"ramster keygen c --config .*other\.toml"):
        load_cluster_text(cfgdir, GOOD.replace(f'public_key = "{PUB["c"]}"\n', ""), "b")


def load_cluster_text(cfgdir, text, name):
    (cfgdir / "other.toml").write_text(text)
    return load_cluster(cfgdir / "other.toml", name)


@pytest.mark.parametrize("value, words", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
    (42, "must be a string"),
])
def test_bad_public_key(cfgdir, value, words):
    msg = error(_node(doc(), 1, public_key=value), cfgdir)
    assert "node 'b': public_key" in msg and words in msg


def test_two_nodes_with_one_key(cfgdir):
    assert "same public_key" in error(_node(doc(), 2, public_key=PUB["b"]), cfgdir)


def test_secret_file_says_what_replaced_it(cfgdir):
    msg = error(doc(cluster={"secret_file": "cluster.key"}), cfgdir)
    assert "secret_file is no longer used" in msg and "ramster keygen" in msg


def test_private_key_missing(cfgdir):
    (cfgdir / "keys" / "a.key").unlink()
    msg = error(doc(), cfgdir)
    assert "keys/a.key does not exist" in msg and "ramster keygen a" in msg


def test_private_key_of_another_node(cfgdir):
    keys.write_private_key(cfgdir / "keys" / "a.key", KEYS["b"], force=True)
    msg = error(doc(), cfgdir)
    assert "does not match node 'a'" in msg and PUB["b"] in msg


def test_private_key_open_to_others(cfgdir):
    os.chmod(cfgdir / "keys" / "a.key", 0o644)
    assert "open to other users (mode 0644); chmod 600" in error(doc(), cfgdir)


def test_private_key_not_pem(cfgdir):
    path = cfgdir / "keys" / "a.key"
    path.write_text(PUB["a"])
    assert "not a PEM private key" in error(doc(), cfgdir)


def test_private_key_encrypted_or_not_ed25519(cfgdir):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = cfgdir / "keys" / "a.key"
    path.write_bytes(KEYS["a"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"pw")))
    assert "is encrypted" in error(doc(), cfgdir)
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert "not an Ed25519 key (EC)" in error(doc(), cfgdir)


def test_private_key_unreadable(cfgdir, monkeypatch):
    # chmod 0 does not stop root, so make the read itself fail
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "a.key":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert "not readable (Permission denied)" in error(doc(), cfgdir)


def test_private_key_is_a_directory(cfgdir):
    (cfgdir / "keys" / "a.key").unlink()
    (cfgdir / "keys" / "a.key").mkdir()
    assert "is a directory" in error(doc(), cfgdir)


@pytest.mark.parametrize("name", ["../a", "a/b", ".", "..", "x\\y"])
def test_node_name_that_cannot_name_a_key_file(cfgdir, name):
    assert "must not contain" in error(_node(doc(), 2, name=name), cfgdir)


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
