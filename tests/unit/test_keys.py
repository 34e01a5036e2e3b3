"""Node key files and public key text."""
from __future__ import annotations

import base64
import os

import pytest

from ramster.remote import keys


def test_write_read_round_trip_mode_0600(tmp_path):
    path = tmp_path / "new" / "a.key"
    k = keys.write_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.public_bytes(keys.read_private_key(path)) == keys.public_bytes(k)
    assert [p.name for p in path.parent.iterdir()] == ["a.key"]  # no temporary file left behind


def test_never_overwritten_without_force(tmp_path):
    path = tmp_path / "a.key"
    first = keys.write_private_key(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        keys.write_private_key(path)
    assert path.read_bytes() == before
    second = keys.write_private_key(path, force=True)
    assert keys.public_bytes(keys.read_private_key(path)) == keys.public_bytes(second) != keys.public_bytes(first)
    assert path.stat().st_mode & 0o777 == 0o600 and len(list(tmp_path.iterdir())) == 1


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def no_space(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        keys.write_private_key(tmp_path / "a.key")
    assert list(tmp_path.iterdir()) == []


def test_node_keys_makes_missing_and_reuses_existing(tmp_path):
    first = keys.node_keys(tmp_path / "keys", ["a", "b"])
    again = keys.node_keys(tmp_path / "keys", ["b", "c"])
    assert again["b"] == first["b"] and len({first["a"], first["b"], again["c"]}) == 3


def test_public_key_text():
    k = keys.new_private_key()
    text = keys.public_key_text(k)
    assert keys.parse_public_key(text) == keys.public_bytes(k) == base64.b64decode(text)
    assert keys.parse_public_key(f"  {text}\n") == keys.public_bytes(k)
    for bad in ("", "***", base64.b64encode(bytes(33)).decode(), None):
        with pytest.raises(keys.BadKey):
            keys.parse_public_key(bad)


def test_sign_and_verify():
    k, other = keys.new_private_key(), keys.new_private_key()
    sig = keys.sign(k, b"transcript")
    assert keys.verify(keys.public_bytes(k), sig, b"transcript")
    assert not keys.verify(keys.public_bytes(k), sig, b"transcript!")
    assert not keys.verify(keys.public_bytes(other), sig, b"transcript")
    assert not keys.verify(keys.public_bytes(k), sig[:32], b"transcript")
    assert not keys.verify(keys.public_bytes(k), bytes(64), b"transcript")
