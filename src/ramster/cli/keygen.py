"""`ramster keygen`: make a node's key pair, the proof of who it is to its peers."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UserError

DESCRIPTION = """\
Make the key pair with which node NAME proves to its peers that it is NAME.

The private key is written to KEY_DIR/NAME.key (PEM, mode 0600) and must stay
on that node only. The public key is printed on standard output as the line
to add to NAME's [[cluster.node]] table in the cluster file, the same file on
every node (public keys are not secret):

  [cluster]
  name = "lab"
  key_dir = "keys"          # the default: keys/ beside the cluster file
  [[cluster.node]]
  name = "a"
  number = 0
  address = "10.0.0.1:7701"
  public_key = "..."        # <- the line ramster keygen prints

A node refuses to start without its private key, or when any node of the
cluster file has no public_key. A peer is accepted only if it signs the
handshake with the key of the node it claims to be, so a node that holds
only its own key cannot act as another.

An existing key is never replaced without --force; after --force, update
the node's public_key in every copy of the cluster file.
"""

EPILOG = """\
examples:
  ramster keygen a --config lab.toml              on node a: writes keys/a.key beside lab.toml
  ramster keygen a --config lab.toml >> a.line    the public_key line alone goes to stdout
  ramster keygen a --config lab.toml --show       the public_key line of the existing key
  ramster keygen b --dir /etc/ramster/keys        writes /etc/ramster/keys/b.key
  openssl genpkey -algorithm ed25519 -out keys/a.key && chmod 600 keys/a.key
                                                  works too (then --show prints its line)
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("keygen", help="make a node's key pair (identity in a RAMster cluster)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="the node's name, as in its [[cluster.node]] table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE",
                       help="the cluster file: the key goes to its key_dir, and NAME must be one of its nodes")
    where.add_argument("--dir", metavar="DIR",
                       help="write DIR/NAME.key (default: keys/ in the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing key (its old public_key then stops working)")
    p.add_argument("--show", action="store_true",
                   help="write nothing: print the public_key line of the existing key")
    p.set_defaults(func=main)
    return p


def _key_path(args) -> tuple[Path, dict | None]:
    """Where NAME's private key goes, and NAME's [[cluster.node]] table when --config names one."""
    from ..config import ConfigError, read_toml
    from ..remote.clusterconf import DEFAULT_KEY_DIR

    name = args.name
    if not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise UserError(f"invalid node name {name!r}: it names the key file, so no '/', '\\' or NUL")
    if args.config is None:
        return Path(args.dir if args.dir is not None else DEFAULT_KEY_DIR) / f"{name}.key", None
    try:
        doc = read_toml(args.config)
    except ConfigError as e:
        raise UserError(str(e)) from None
    cluster = doc.get("cluster")
    if not isinstance(cluster, dict):
        raise UserError(f"{args.config} has no [cluster] table")
    tables = cluster.get("node", [])
    tables = [tables] if isinstance(tables, dict) else tables if isinstance(tables, list) else []
    names = [t.get("name") for t in tables if isinstance(t, dict)]
    if name not in names:
        listed = ", ".join(str(n) for n in names) or "none"
        raise UserError(f"{args.config} has no node named {name!r} (nodes: {listed})")
    key_dir = cluster.get("key_dir", DEFAULT_KEY_DIR)
    if not isinstance(key_dir, str) or not key_dir:
        raise UserError(f"{args.config}: key_dir must be a non-empty path")
    # relative to the cluster file, as the node resolves it
    base = Path(args.config).resolve().parent
    return base / Path(key_dir).expanduser() / f"{name}.key", tables[names.index(name)]


def main(args: argparse.Namespace) -> int:
    from ..remote import keys

    path, table = _key_path(args)
    if args.show:
        try:
            key = keys.read_private_key(path)
        except keys.BadKey as e:
            raise UserError(str(e)) from None
        print(f'public_key = "{keys.public_key_text(key)}"')
        listed = table.get("public_key") if table is not None else None
        if listed is not None and listed != keys.public_key_text(key):
            print(f"note: {args.config} lists another public_key for node {args.name!r}; "
                  f"node {args.name} will not start until they match", file=sys.stderr)
        return 0
    try:
        key = keys.write_private_key(path, force=args.force)
    except FileExistsError:
        raise UserError(f"{path} exists; --show prints its public_key line, --force replaces it") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    line = f'public_key = "{keys.public_key_text(key)}"'
    print(f"wrote {path} (the private key of node {args.name}: keep it on that node only, mode 0600)\n"
          f"add this line to node {args.name}'s [[cluster.node]] table in every copy of the cluster file:",
          file=sys.stderr)
    print(line, flush=True)
    return 0
