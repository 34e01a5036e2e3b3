"""One door per layer (DESIGN.md, "Layout"): the callers of zcache use only its public methods.

Read from the source with `ast`, not at run time, so a path no test exercises is
checked too. For every module of the packages above zcache:

- it imports nothing below zcache: not tmem, zbud, frames or compress, nor the
  files Zcache itself is written in besides zcache.py (pampd.py's and units'
  constants are fine: they describe values, they are not a layer); the
  benchmarks alone may import the codecs, which they time on their own;
- on a Zcache (an expression named `zc`, `_zc`, or an attribute of either
  name: `self.zc`, `frontswap.zc`, ...) it reads only what Zcache's classes
  declare public: methods and properties not starting with "_", and the
  §4.8 counters (read only);
- it assigns no attribute of a Zcache: wiring is done by named operations
  (`attach_remote`) or at construction, and counters are bumped by zcache.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ramster"
# the packages that must go through Zcache's door
CALLERS = ("remote", "frontends", "nbd", "bench")
BELOW = {"ramster.tmem", "ramster.zbud", "ramster.frames", "ramster.compress",
         "ramster.zcache_reclaim", "ramster.zcache_remote", "ramster.handles"}
# what a package may import from below all the same: the benchmarks time the codecs
# themselves, as the floor the engine's put and get are compared with
MAY_IMPORT = {"bench": {"ramster.compress"}}
ZCACHE_FILES = ("zcache.py", "zcache_reclaim.py", "zcache_recompress.py", "zcache_remote.py")


def _zcache_public() -> set[str]:
    """Public methods, properties and declared attributes of Zcache and its bases, and its event counters."""
    names: set[str] = set()
    for f in ZCACHE_FILES:
        tree = ast.parse((SRC / f).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        names.add(item.name)
                    # an attribute the class declares (annotated in its body) is public too
                    elif (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                          and not item.target.id.startswith("_")):
                        names.add(item.target.id)
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "_EVENT_COUNTERS" for t in node.targets):
                names.update(ast.literal_eval(node.value))
    return names


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_zcache(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return expr.id in ("zc", "_zc")
    return isinstance(expr, ast.Attribute) and expr.attr in ("zc", "_zc")


def violations(source: str, module: str, public: set[str]) -> list[str]:
    """What in `source` (the text of module `module`) reaches past Zcache's door."""
    out = []
    package = module.rsplit(".", 1)[0]
    allowed = MAY_IMPORT.get(package.split(".")[-1], set())
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if t in BELOW and t not in allowed:
                out.append(f"{module}:{node.lineno}: imports {t}, below zcache")
        if isinstance(node, ast.Attribute) and _is_zcache(node.value):
            if not isinstance(node.ctx, ast.Load):
                out.append(f"{module}:{node.lineno}: sets zc.{node.attr}: wiring is done at construction or by a named operation, counters by zcache")
            elif node.attr not in public:
                out.append(f"{module}:{node.lineno}: reads zc.{node.attr}, not a public part of Zcache")
    return out


def _caller_files() -> list[Path]:
    return sorted(p for pkg in CALLERS for p in (SRC / pkg).glob("*.py"))


@pytest.mark.parametrize("path", _caller_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_callers_use_only_zcaches_door(path):
    found = violations(path.read_text(), _module_name(path), _zcache_public())
    assert not found, "\n".join(found)


def test_the_checker_finds_what_the_old_layout_did():
    # lines as remote/ramster.py and the front-ends had them before the door existed
    old = '''
from ..tmem import LOCAL_CLIENT, Pool
from ..zbud import EPH, PERS, ZOMBIE
from ..zcache import PAGE_SIZE, REMOTE_BASE, Zcache
class Ramster:
    def __init__(self, zc):
        zc.remote = self
    def free_frames(self):
        a = self.zc.arena
        return max(0, a.budget - a.in_use) + self.zc.zbud.pageframes[EPH]
    def walk(self, pool, oid, index):
        zc = self.zc
        return zc.tmem.lookup(pool, oid, index) <= REMOTE_BASE and zc._pools
    def store(self):
        self.zc.pers_nonactive_puts_ignored += 1
        self._zc.writeback_sink(None, 0, 0, b"")
'''
    found = violations(old, "ramster.remote.ramster", _zcache_public())
    for what in ("imports ramster.tmem", "imports ramster.zbud", "sets zc.remote", "reads zc.arena",
                 "reads zc.zbud", "reads zc.tmem", "reads zc._pools", "sets zc.pers_nonactive_puts_ignored",
                 "reads zc.writeback_sink"):
        assert any(what in f for f in found), what
    assert not any("ramster.zcache " in f or "imports ramster.zcache\n" in f for f in found)


def test_the_door_is_what_the_callers_were_promised():
    public = _zcache_public()
    for name in ("put_page", "get_page", "get_pool_page", "peek_page", "flush_page", "flush_object",
                 "destroy_pool", "contains", "on_peer", "pageframes_in_use", "close", "attach_remote",
                 "take_lru", "commit_remote", "release_taken", "put_raw", "get_raw", "remote_slots"):
        assert name in public, name
    for internal in ("tmem", "zbud", "arena", "codec", "writeback_sink", "remote", "huge_lru"):
        assert internal not in public, internal
