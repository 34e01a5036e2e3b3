"""Node keys: the Ed25519 key pair with which a node proves to its peers who it is.

- The private key is a PEM (PKCS#8) file, the format `openssl genpkey
  -algorithm ed25519` writes too, kept on its node only and readable by its
  owner alone (mode 0600; a key others can read is refused, as ssh does).
- The public key goes in the cluster file, the same on every node, as the
  base64 of its 32 raw bytes: `public_key = "…"` in the node's
  [[cluster.node]] table. Public keys are not secret: the file can be shared.

`ramster keygen` makes both (ramster.cli.keygen).
"""
from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class BadKey(ValueError):
    """A key file or key text that cannot be used; the message is one line naming it."""


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as the cluster file spells it: base64 of the 32 raw bytes."""
    return base64.b64encode(public_bytes(key)).decode()


def parse_public_key(text) -> bytes:
    """The 32 raw bytes of a `public_key = "…"` value; BadKey if it is not one."""
    if not isinstance(text, str):
        raise BadKey(f"must be a string (base64 of 32 bytes), not {text!r}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey(f"{text!r} is not base64") from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise BadKey(f"{text!r} is {len(raw)} bytes, an Ed25519 public key is {PUBLIC_KEY_SIZE}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:  # pragma: no cover - any 32 bytes load; kept in case the library gets stricter
        raise BadKey(f"{text!r} is not an Ed25519 public key") from None
    return raw


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private_key(path: str | os.PathLike, key: Ed25519PrivateKey | None = None,
                      force: bool = False) -> Ed25519PrivateKey:
    """Write `key` (a new one by default) to `path` with mode 0600 and return it.

    FileExistsError when `path` exists and not `force`. The file appears
    whole or not at all (written beside it, then linked or renamed into place),
    so a crash or a full disk never leaves a half key where a node looks.
    Missing parent directories are made with mode 0700.
    """
    key = key or new_private_key()
    path = Path(path)
    if path.exists() and not force:  # checked first so nothing is written; the link below decides
        raise FileExistsError(17, "File exists", str(path))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem(key))
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # never replaces a file that appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return key


def read_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; BadKey (one line, naming the file) otherwise."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadKey(f"private key {path} does not exist") from None
    except IsADirectoryError:
        raise BadKey(f"private key {path} is a directory") from None
    except OSError as e:
        raise BadKey(f"private key {path} is not readable ({e.strerror})") from None
    if st.st_mode & 0o077:
        raise BadKey(f"private key {path} is open to other users (mode {st.st_mode & 0o777:04o}); "
                        f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BadKey(f"private key {path} is encrypted; ramster needs it unencrypted "
                        f"(protect it with mode 0600 instead)") from None
    except ValueError:
        raise BadKey(f"{path} is not a PEM private key (make one with ramster keygen)") from None
    except Exception as e:  # the library's parser refusing something odd
        raise BadKey(f"{path} is not a usable private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"private key {path} is not an Ed25519 key ({type(key).__name__.removesuffix('PrivateKey')})")
    return key


def node_keys(key_dir: str | os.PathLike, names) -> dict[str, str]:
    """For tools that write a whole cluster on one machine (tests, `ramster bench
    cluster`): each node's `public_key` text, making `key_dir/<name>.key` where
    it is missing and reusing it where it exists."""
    out = {}
    for name in names:
        path = Path(key_dir) / f"{name}.key"
        key = read_private_key(path) if path.exists() else write_private_key(path)
        out[name] = public_key_text(key)
    return out


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the holder of `public_key`'s signature of `data`."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
