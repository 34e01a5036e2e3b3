"""A running node's settings and the verbs that change them: one path for SIGHUP and `ramster ctl`.

What can change while a node serves, and what each change does:

    memory        the budget: Zcache.set_max_pageframes (shrinking evicts
                  cache frames and writes back, or in a cluster remotifies,
                  swap frames); never above the machine's memory
    log_level     every logger without a level of its own (logsetup.set_level)
    persistent    remotify switches per pool kind (the seed's
    ephemeral       pers_remotify_enable / eph_remotify_enable)
    selfshrink    the idle-time repatriation (the seed's frontswap_selfshrinking)
    targets       the peers remotify may use (the seed's remote_target_nodenum;
                  `pin` narrows them, `unpin` returns to the file's)

and, outside the config file, which peers are marked down (the seed's
manual_node_up, inverted: every peer starts up). Everything else the file
says (compressor, listen and metrics addresses, exports, the cluster's nodes,
keys, timeouts, replicas) is built into sockets and structures at start-up:
a reload that finds it changed logs "needs a restart" and leaves it.

Two sources change settings, through the one method `_change` (checks the
value, applies it, counts it, logs "old -> new"):

- a reload (SIGHUP or `ramster ctl reload`) re-reads the config file with the
  command line's flags on top (the `loader` the node was given) and applies
  each setting whose value *in the file* differs from what the file said at
  the last read (`self.file`);
- `ramster ctl` sets a value directly.

So a ctl change stays in force across reloads until someone edits that
setting in the file: the file's newer word wins, an untouched file never
undoes an operator's command. A flag on the command line shadows the file's
value, so a SIGHUP cannot change a setting given as a flag.

The zram verbs (mark idle, write back idle or huge pages, recompress, compact) and the selfshrink
trigger are actions, not settings: they are counted and logged the same way
and change nothing a reload would look at.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import hostmem, logsetup, sdnotify
from .config import ConfigError
from .frames import MAX_FRAMES
from .control_protocol import FAILED, INVALID, Reply, Request, ok, refusal
from .units import PAGE_SIZE, format_size, parse_size

log = logging.getLogger("ramster.control")

RUNTIME = ("memory", "log_level", "persistent", "ephemeral", "selfshrink", "targets")
CLUSTER_ONLY = ("persistent", "ephemeral", "selfshrink", "targets")
# NodeConfig fields a reload may apply; every other one is built in at start-up
_NODE_RUNTIME = ("memory", "log_level", "source")
# ClusterConfig fields built in at start-up (the [remotify] switches and targets are not)
_CLUSTER_FIXED = ("name", "nodes", "replicas", "idle_timeout", "keepalive", "request_timeout",
                  "reconnect_delay", "reconnect_max", "tls_cert", "tls_key", "tls_ca", "key_file")

# /stats counter -> what it counts; declared in counters.py
COUNTERS = (
    "memory_changes", "log_level_changes", "eph_remotify_switches", "pers_remotify_switches",
    "selfshrink_switches", "target_changes", "peers_marked_down", "peers_marked_up",
    "selfshrinks", "idle_marks", "idle_writebacks", "huge_writebacks", "recompressions", "compactions",
    "reloads", "reload_failures", "requests", "requests_refused",
)  # fmt: skip
_COUNTER_OF = {"memory": "memory_changes", "log_level": "log_level_changes",
               "ephemeral": "eph_remotify_switches", "persistent": "pers_remotify_switches",
               "selfshrink": "selfshrink_switches", "targets": "target_changes"}


class ControlError(Exception):
    """A verb refused: `kind` is control_protocol's INVALID (a bad value) or FAILED."""

    def __init__(self, message: str, kind: str = INVALID):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Settings:
    """The runtime settings; the four cluster ones are None on a single node."""

    memory: int
    log_level: str
    persistent: bool | None = None
    ephemeral: bool | None = None
    selfshrink: bool | None = None
    targets: tuple[int, ...] | None = None


def settings_of(config, cluster=None) -> Settings:
    """What a NodeConfig (and ClusterConfig, in a cluster) says the settings are."""
    if cluster is None:
        return Settings(config.memory, config.log_level)
    return Settings(config.memory, config.log_level, cluster.persistent, cluster.ephemeral,
                    cluster.selfshrink, tuple(t.number for t in cluster.targets))


def restart_changes(old_config, new_config, old_cluster=None, new_cluster=None) -> list[tuple[str, object, object]]:
    """(what, running value, file's value) for each setting that differs and cannot change at run time."""
    out = []
    for f in dataclasses.fields(old_config):
        if f.name in _NODE_RUNTIME:
            continue
        a, b = getattr(old_config, f.name), getattr(new_config, f.name, None)
        if f.name == "exports" and _default_exports(old_config) and _default_exports(new_config):
            continue  # no exports given: the default follows the memory, which is a runtime setting
        if a != b:
            out.append((f.name, a, b))
    if (old_cluster is None) != (new_cluster is None):
        out.append(("cluster", old_cluster is not None, new_cluster is not None))
    elif old_cluster is not None:
        for name in _CLUSTER_FIXED:
            a, b = getattr(old_cluster, name), getattr(new_cluster, name)
            if a != b:
                out.append((f"cluster.{name}", a, b))
    return out


def _default_exports(config) -> bool:
    """True when the exports are the default one (config.build: "swap", twice the memory)."""
    e = config.exports
    return len(e) == 1 and (e[0].name, e[0].kind, e[0].size, e[0].backing) == ("swap", "swap", 2 * config.memory, None)


def _plain(value) -> str:
    """A config value as the log shows it: exports by their --export spec."""
    if isinstance(value, list):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    spec = getattr(value, "spec", None)
    return spec() if callable(spec) else str(value)


def check_memory(value: int) -> str | None:
    """ControlError (one line) for a budget a node cannot take, as at start-up
    (hostmem: more than the machine or the cgroup has); a warning for one near it."""
    if value <= 0 or value % PAGE_SIZE:
        raise ControlError(f"memory {value} is not a positive multiple of {PAGE_SIZE} bytes")
    if value // PAGE_SIZE > MAX_FRAMES:
        raise ControlError(f"memory {format_size(value)} is more than one node can hold "
                           f"(at most {format_size(MAX_FRAMES * PAGE_SIZE)})")
    try:
        return hostmem.check_budget(value)
    except ValueError as e:
        raise ControlError(str(e)) from None


def _switch(word: str) -> bool:
    w = word.lower()
    if w in ("on", "1", "true", "yes"):
        return True
    if w in ("off", "0", "false", "no"):
        return False
    raise ControlError(f"expected on or off, not {word!r}")


def _pages(word: str | None) -> int | None:
    if word is None:
        return None
    if not word.isdigit() or int(word) <= 0:
        raise ControlError(f"PAGES must be a positive whole number, not {word!r}")
    return int(word)


class Control:
    """The node's runtime settings and verbs (see the module comment). `zc` is the
    node's Zcache; in a cluster `ramster` and `net` are its Ramster and PeerNetwork
    and `cluster` its ClusterConfig; `loader()` re-reads the config (file and flags)
    and returns (NodeConfig, ClusterConfig or None), raising ConfigError."""

    def __init__(self, zc, config, cluster=None, *, ramster=None, net=None,
                 loader: Callable[[], tuple] | None = None):
        self.zc = zc
        self.ramster = ramster
        self.net = net
        self.cluster = cluster
        self.loader = loader
        self._running = (config, cluster)  # what was built in at start-up
        self.file = settings_of(config, cluster)  # what the config said at the last read
        self._lock = asyncio.Lock()
        for name in COUNTERS:
            setattr(self, name, 0)

    # ---- the settings in force ----------------------------------------------------------

    def current(self) -> Settings:
        zc, r = self.zc, self.ramster
        base = Settings(zc.max_pageframes * PAGE_SIZE, logsetup.level())
        if r is None:
            return base
        p = r.policy
        return dataclasses.replace(base, persistent=p.persistent, ephemeral=p.ephemeral,
                                   selfshrink=p.selfshrink, targets=tuple(p.targets))

    def _show(self, key: str, value) -> str:
        if key == "memory":
            return format_size(value)
        if key == "targets":
            return ",".join(self._name(n) for n in value) or "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        return str(value)

    def _name(self, number: int) -> str:
        spec = self.cluster.node(number) if self.cluster is not None else None
        return spec.name if spec is not None else str(number)

    def _change(self, key: str, value, source: str) -> str | None:
        """Apply one setting; the log line's text ("memory 64 MiB -> 128 MiB"), None if unchanged."""
        old = getattr(self.current(), key)
        if key in CLUSTER_ONLY and self.ramster is None:
            raise ControlError(f"{key} is a cluster setting and this node is not in a cluster")
        if value == old:
            return None
        extra = ""
        if key == "memory":
            warning = check_memory(value)
            if warning is not None:
                log.warning("%s: %s", source, warning)
                extra = f"; {warning}"
            over = self.zc.set_max_pageframes(value // PAGE_SIZE)
            if self.ramster is not None:
                self.ramster.wake()  # over the new budget: the worker moves pages to peers
            if over:
                extra = f" ({format_size(over * PAGE_SIZE)} still above it until pages leave){extra}"
        elif key == "log_level":
            try:
                logsetup.set_level(value)
            except ValueError as e:
                raise ControlError(str(e)) from None
        elif key == "targets":
            self.ramster.set_targets(value)
        elif key == "selfshrink":
            self.ramster.set_selfshrink(value)
        else:
            self.ramster.set_remotify(key == "persistent", value)
        counter = _COUNTER_OF[key]
        setattr(self, counter, getattr(self, counter) + 1)
        text = f"{key} {self._show(key, old)} -> {self._show(key, value)}{extra}"
        log.info("%s: %s", source, text)
        return text

    # ---- reload ---------------------------------------------------------------------------

    def reload(self, source: str = "reload") -> list[str]:
        """Re-read the config and apply what changed in it (see the module comment);
        the lines logged. ControlError when the config cannot be read."""
        if self.loader is None:
            raise ControlError("this node was started without a way to re-read its config", FAILED)
        sdnotify.notify("RELOADING=1")
        try:
            return self._reload(source)
        finally:
            sdnotify.notify("READY=1")

    def _reload(self, source: str) -> list[str]:
        try:
            config, cluster = self.loader()
        except ConfigError as e:
            self.reload_failures += 1
            log.error("%s failed: %s; the running settings stay", source, e)
            raise ControlError(f"cannot re-read the config: {e}", FAILED) from None
        self.reloads += 1
        if (cluster is None) == (self.ramster is None):
            new = settings_of(config, cluster)
        else:  # joining or leaving a cluster needs a restart (below); the node's own settings apply
            new = dataclasses.replace(self.file, memory=config.memory, log_level=config.log_level)
        lines = []
        for key in RUNTIME:
            was, now = getattr(self.file, key), getattr(new, key)
            if now == was:
                continue  # the file did not touch it: a ctl change stays
            try:
                text = self._change(key, now, source)
            except ControlError as e:
                log.error("%s: %s in the config is not applied: %s", source, key, e)
                lines.append(f"{key}: not applied: {e}")
                continue
            lines.append(text or f"{key} already {self._show(key, now)}")
        self.file = new
        running_config, running_cluster = self._running
        for what, running, wanted in restart_changes(running_config, config, running_cluster, cluster):
            log.warning("%s: %s changed in the config (%s -> %s): needs a restart, not applied",
                        source, what, _plain(running), _plain(wanted))
            lines.append(f"{what}: needs a restart")
        if not lines:
            log.info("%s: nothing changed in the config", source)
        return lines

    async def sighup(self) -> None:
        """A reload for SIGHUP: what it did is in the log; it never stops the node."""
        async with self._lock:
            try:
                self.reload("SIGHUP")
            except ControlError:
                pass  # logged: the running settings stay

    # ---- the verbs ------------------------------------------------------------------------

    async def handle(self, req: Request) -> Reply:
        """Run one request; every refusal is a Reply, never an exception."""
        self.requests += 1
        method = getattr(self, "verb_" + req.verb.replace("-", "_"))
        async with self._lock:
            try:
                return await method(*req.args)
            except ControlError as e:
                return refusal(e.kind, str(e))
            except Exception as e:  # a bug: the node keeps serving, the caller hears of it
                log.exception("ramster ctl %s failed", req.verb)
                return refusal(FAILED, f"{req.verb} failed: {e}")

    async def verb_show(self) -> Reply:
        cur = self.current()
        shown = {k: self._show(k, getattr(cur, k)) for k in RUNTIME if getattr(cur, k) is not None}
        if self.net is not None:
            shown["down"] = ",".join(self._name(p.number) for p in self.net.peers() if p.down) or "none"
        return ok("\n".join(f"{k} = {v}" for k, v in shown.items()), **shown)

    async def verb_reload(self) -> Reply:
        lines = self.reload("ctl reload")
        return ok("\n".join(lines) or "nothing changed in the config", changes=lines)

    async def _set(self, key: str, value) -> Reply:
        text = self._change(key, value, "ctl")
        return ok(text or f"{key} already {self._show(key, value)}", changed=text is not None)

    async def verb_memory(self, size: str) -> Reply:
        try:
            value = parse_size(size, "memory")
        except ValueError as e:
            raise ControlError(str(e)) from None
        return await self._set("memory", value)

    async def verb_log_level(self, level: str) -> Reply:
        return await self._set("log_level", level.lower())

    async def verb_remotify(self, kind: str, switch: str) -> Reply:
        keys = {"eph": ("ephemeral",), "pers": ("persistent",), "all": ("persistent", "ephemeral")}.get(kind.lower())
        if keys is None:
            raise ControlError(f"expected eph, pers or all, not {kind!r}")
        on = _switch(switch)
        texts = [t for t in (self._change(k, on, "ctl") for k in keys) if t]
        return ok("; ".join(texts) or f"remotify {kind} already {self._show('', on)}", changed=bool(texts))

    def _peer(self, word: str) -> int:
        if self.net is None:
            raise ControlError("this node is not in a cluster: it has no peers")
        for spec in self.cluster.nodes:
            if word in (spec.name, str(spec.number)):
                if spec.number == self.cluster.local.number:
                    raise ControlError(f"{word} is this node, not a peer")
                return spec.number
        raise ControlError(f"no node {word!r} in cluster {self.cluster.name} "
                           f"(nodes: {', '.join(n.name for n in self.cluster.peers)})")

    async def verb_pin(self, *words: str) -> Reply:
        numbers = []
        for w in words:
            n = self._peer(w)
            if n not in numbers:
                numbers.append(n)
        down = [self._name(p.number) for p in self.net.peers() if p.down and p.number in numbers]
        if down:
            raise ControlError(f"{', '.join(down)} is marked down: mark it up first")
        replicas = self.ramster.policy.replicas
        if len(numbers) < replicas:
            raise ControlError(f"replicas = {replicas}: pin at least {replicas} nodes")
        return await self._set("targets", tuple(sorted(numbers)))

    async def verb_unpin(self) -> Reply:
        if self.ramster is None:
            raise ControlError("this node is not in a cluster: it has no targets")
        return await self._set("targets", self.file.targets)

    async def verb_peer(self, word: str, state: str) -> Reply:
        n = self._peer(word)
        if state.lower() not in ("up", "down"):
            raise ControlError(f"expected up or down, not {state!r}")
        down = state.lower() == "down"
        if not self.net.mark_down(n, down):
            return ok(f"peer {self._name(n)} already {state.lower()}", changed=False)
        if down:
            self.peers_marked_down += 1
        else:
            self.peers_marked_up += 1
        text = f"peer {self._name(n)} {'up -> down' if down else 'down -> up'}"
        log.info("ctl: %s", text)
        return ok(text, changed=True)

    async def verb_selfshrink(self, action: str = "now", pages: str | None = None) -> Reply:
        if self.ramster is None:
            raise ControlError("this node is not in a cluster: no pages live on peers")
        action = action.lower()
        if action in ("on", "off"):
            if pages is not None:
                raise ControlError(f"selfshrink {action} takes no PAGES")
            return await self._set("selfshrink", action == "on")
        if action != "now":
            raise ControlError(f"expected now, on or off, not {action!r}")
        limit = _pages(pages)
        before = self.ramster.remote_pages[1]
        done = await self.ramster.selfshrink_now(limit)
        self.selfshrinks += 1
        text = f"selfshrink: {done} page(s) brought home, {before} -> {self.ramster.remote_pages[1]} remote"
        log.info("ctl: %s", text)
        return ok(text, pages=done)

    async def verb_mark_idle(self) -> Reply:
        n = self.zc.mark_idle()
        self.idle_marks += 1
        text = f"mark-idle: {n} page(s) marked idle"
        log.info("ctl: %s", text)
        return ok(text, pages=n)

    async def verb_writeback(self, kind: str, pages: str | None = None) -> Reply:
        kind = kind.lower()
        if kind not in ("idle", "huge"):
            raise ControlError(f"expected idle or huge, not {kind!r}")
        limit = _pages(pages)
        if kind == "idle":
            n = self.zc.writeback_idle(limit)
            self.idle_writebacks += 1
        else:
            n = self.zc.writeback_huge(limit)
            self.huge_writebacks += 1
        text = f"writeback {kind}: {n} page(s) left memory"
        log.info("ctl: %s", text)
        return ok(text, pages=n)

    async def verb_recompress(self, pages: str | None = None) -> Reply:
        limit = _pages(pages)
        zc = self.zc
        saved = zc.recompress_saved_bytes
        n = zc.recompress(limit)
        self.recompressions += 1
        text = (f"recompress: {n} page(s) recompressed with {zc.recompressor}, "
                f"{format_size(zc.recompress_saved_bytes - saved)} saved")
        log.info("ctl: %s", text)
        return ok(text, pages=n, saved=zc.recompress_saved_bytes - saved)

    async def verb_compact(self) -> Reply:
        zc = self.zc
        moved = zc.stats().get("dense.objects_moved", 0)
        n = zc.compact()
        self.compactions += 1
        moved = zc.stats().get("dense.objects_moved", 0) - moved
        text = f"compact: {moved} page(s) moved, {format_size(n * PAGE_SIZE)} freed"
        log.info("ctl: %s", text)
        return ok(text, frames=n, moved=moved)

    # ---- statistics -------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        s = {f"control.{k}": getattr(self, k) for k in COUNTERS}
        if self.ramster is not None:
            p = self.ramster.policy
            s["ramster.eph_remotify_enable"] = int(p.ephemeral)
            s["ramster.pers_remotify_enable"] = int(p.persistent)
            s["ramster.selfshrink_enable"] = int(p.selfshrink)
        return s
