"""Every number a node reports, declared once: its /stats key, kind, unit, help and labels.

A node reports its numbers twice. /stats (JSON, read by `ramster stats`) and
`Zcache.stats()` keep the seed's debugfs names, "zcache.eph_pageframes",
"zbud.pers_zombie_count", "ramster.remote_pages_short" (SPEC §3.9, §4.8,
§5.11), so that anyone who knows zcache2 and RAMster finds them. /metrics
serves the same values to Prometheus under names that follow its
conventions. This module is the one table between the two; metrics.py
renders /metrics from it and guesses nothing from a name.

A /stats document has four parts, and each is declared here:

    "counters"  flat, seed name -> int                   COUNTERS, by seed name
    "exports"   export name -> {"size", "counters": {field: int}, "gauges": {field: int}}
                                                          EXPORT_STATS, by "size",
                                                          "counters.FIELD", "gauges.FIELD"
    "peers"     one dict per other node, by field         PEER_STATS, by field
    "node"      this process: version, pid, uptime, ...    DESCRIPTIVE, and BUILD_INFO

Fields that describe rather than measure (an export's kind and backing file,
a peer's name and number, the node's pid) become labels or stay in /stats
only; DESCRIPTIVE says which and why. A test reads a running node's /stats
and fails on any key this module does not declare, so a new counter cannot
appear without a kind, a unit and a help text.

From a seed name to a Prometheus name:

- Prefix "ramster_", then the seed's layer (zcache_, zbud_, frontswap_,
  cleancache_; export_ and peer_ for the NBD exports and the peers). The
  seed's own "ramster." layer adds nothing after the prefix:
  "ramster.remote_pages_short" is ramster_remote_pages_short, not
  ramster_ramster_remote_pages_short.
- The pool kind the seed glues into a name becomes the label pool="eph" or
  pool="pers": zcache.eph_pageframes and zcache.pers_pageframes are the two
  series of ramster_zcache_pageframes_bytes. Exports get export="NAME" and
  kind="swap"|"cache"; peers get peer="NAME".
- Units are base units and end the name: a gauge counted in page frames is
  memory held, so it is multiplied by PAGE_SIZE and named _bytes; bytes stay
  _bytes and times _seconds. A number of things (pages stored, objects,
  requests) and a number of events (frames evicted, pages written back) stay
  plain numbers: a page's memory cost is what the frame and zbytes gauges
  show, not PAGE_SIZE.
- A counter (a number that only grows while the node runs) ends in _total;
  a gauge (a level now, or the highest level so far, "_max") does not.
  Seed names that say "count" of a level (obj_count, zbud's buddied_count)
  lose the word, which Prometheus keeps for histograms: ramster_zcache_objects.
  "cumul" (ever added) becomes "_added" with _total, and "zbytes"
  (compressed bytes) "compressed" with _bytes.
- eph_ate_tail and pers_ate_eph are one act, a put of either kind eating the
  least recently used ephemeral frame: ramster_zcache_ouroboros_total, with
  the put's kind as the pool label.
- Help text is a sentence about what is counted; it says "gauge" of a
  gauge, never "counter", and does not repeat the name.
"""
from __future__ import annotations

from dataclasses import dataclass

from .units import PAGE_SIZE

COUNTER = "counter"
GAUGE = "gauge"

# The unit a value has in /stats; Prometheus gets the base unit.
NUMBER = ""  # a count of things or events: no unit suffix
BYTES = "bytes"
SECONDS = "seconds"
FRAMES = "frames"  # page frames held: memory, exposed as bytes (x PAGE_SIZE)

POOLS = ("eph", "pers")  # the seed's two classes: ephemeral (cleancache) and persistent (frontswap)


@dataclass(frozen=True)
class Metric:
    """One Prometheus metric family. `base` is the name between "ramster_" and the unit."""

    base: str
    kind: str
    unit: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def base_unit(self) -> str:
        """The Prometheus unit: "bytes", "seconds", or "" for a plain number."""
        return {NUMBER: "", BYTES: "bytes", FRAMES: "bytes", SECONDS: "seconds"}[self.unit]

    @property
    def name(self) -> str:
        """The family name, as in # TYPE; a counter's samples add "_total" to it."""
        return f"ramster_{self.base}_{self.base_unit}" if self.base_unit else f"ramster_{self.base}"

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == COUNTER else self.name

    @property
    def scale(self) -> int:
        """What a /stats value is multiplied by to be in the metric's base unit."""
        return PAGE_SIZE if self.unit == FRAMES else 1


@dataclass(frozen=True)
class Stat:
    """Where one /stats value goes: its metric and the values of the metric's own labels
    (the export and peer labels come first and are filled by the renderer)."""

    key: str
    metric: Metric
    labels: tuple[str, ...] = ()


COUNTERS: dict[str, Stat] = {}
EXPORT_STATS: dict[str, Stat] = {}
PEER_STATS: dict[str, Stat] = {}
CLASS_STATS: dict[str, Stat] = {}  # the dense allocator's size classes (/stats "classes")
METRICS: list[Metric] = []  # every family, in the order /metrics shows them


def _metric(base: str, kind: str, unit: str, help: str, labels: tuple[str, ...] = ()) -> Metric:
    m = Metric(base, kind, unit, help, labels)
    METRICS.append(m)
    return m


def _declare(table: dict[str, Stat], key: str, metric: Metric, *labels: str) -> None:
    assert key not in table, f"{key} declared twice"
    table[key] = Stat(key, metric, labels)


def _counter(key: str, base: str, help: str, unit: str = NUMBER) -> None:
    """A /stats counter with no label."""
    _declare(COUNTERS, key, _metric(base, COUNTER, unit, help))


def _gauge(key: str, base: str, help: str, unit: str = NUMBER) -> None:
    _declare(COUNTERS, key, _metric(base, GAUGE, unit, help))


def _per_pool(pattern: str, base: str, kind: str, help: str, unit: str = NUMBER,
             pools: tuple[str, ...] = POOLS) -> None:
    """One family for the seed's eph_/pers_ pair: `pattern` holds "{pool}"."""
    m = _metric(base, kind, unit, help, ("pool",))
    for pool in pools:
        _declare(COUNTERS, pattern.format(pool=pool), m, pool)


# ---- zcache (SPEC §4.8) -------------------------------------------------------------------

_gauge("zcache.obj_count", "zcache_objects", "Objects (files, swap areas' object ids) tmem indexes now, a gauge.")
_gauge("zcache.obj_count_max", "zcache_objects_max", "The most objects tmem has indexed at once, a gauge.")
_gauge("zcache.objnode_count", "zcache_objnodes",
       "Radix-tree nodes tmem's objects use now to index their pages, a gauge.")
_gauge("zcache.objnode_count_max", "zcache_objnodes_max",
       "The most radix-tree nodes tmem has used at once, a gauge.")
_counter("zcache.flush_total", "zcache_flush", "Flush-page calls, whether or not the page was there.")
_counter("zcache.flush_found", "zcache_flush_found", "Flush-page calls that found the page and dropped it.")
_counter("zcache.flobj_total", "zcache_flobj", "Flush-object calls, whether or not the object was there.")
_counter("zcache.flobj_found", "zcache_flobj_found", "Flush-object calls that found the object and dropped it.")
_per_pool("zcache.failed_{pool}_puts", "zcache_failed_puts", COUNTER,
          "Puts refused for lack of memory (nothing stored, any older copy flushed), by pool kind.")
_counter("zcache.failed_get_free_pages", "zcache_failed_get_free_pages",
         "Puts that found the memory budget spent and had to take a frame from elsewhere.")
_counter("zcache.failed_alloc", "zcache_failed_alloc", "Puts that failed to allocate a tmem object or radix-tree node.")
_counter("zcache.put_to_flush", "zcache_put_to_flush", "Puts turned into flushes because zcache was frozen.")
_counter("zcache.compress_poor", "zcache_compress_poor",
         "Puts rejected because the page compressed to more than the class's size limit.")
_counter("zcache.mean_compress_poor", "zcache_mean_compress_poor",
         "Persistent puts rejected because the mean compressed size stored is already too high.")
ate = _metric("zcache_ouroboros", COUNTER, NUMBER,
              "Puts that found no free frame and reused the least recently used ephemeral frame, "
              "by the pool kind of the put.", ("pool",))
_declare(COUNTERS, "zcache.eph_ate_tail", ate, "eph")
_declare(COUNTERS, "zcache.pers_ate_eph", ate, "pers")
ate = _metric("zcache_ouroboros_failed", COUNTER, NUMBER,
              "Puts that found no free frame and no ephemeral frame to reuse, by the pool kind of the put.",
              ("pool",))
_declare(COUNTERS, "zcache.eph_ate_tail_failed", ate, "eph")
_declare(COUNTERS, "zcache.pers_ate_eph_failed", ate, "pers")
del ate
_per_pool("zcache.evicted_{pool}_zpages", "zcache_evicted_zpages", COUNTER,
          "Compressed pages dropped with the ephemeral frames evicted to make room.", pools=("eph",))
_per_pool("zcache.evicted_{pool}_pageframes", "zcache_evicted_pageframes", COUNTER,
          "Ephemeral page frames evicted to make room, each with the pages it held.", pools=("eph",))
_per_pool("zcache.{pool}_pageframes", "zcache_pageframes", GAUGE,
          "Memory zcache holds now in page frames, by pool kind, a gauge.", FRAMES)
_per_pool("zcache.{pool}_pageframes_max", "zcache_pageframes_max", GAUGE,
          "The most memory zcache has held at once in page frames, by pool kind, a gauge.", FRAMES)
_per_pool("zcache.{pool}_zpages", "zcache_zpages", GAUGE,
          "Compressed pages stored now, by pool kind, a gauge.")
_per_pool("zcache.{pool}_zpages_max", "zcache_zpages_max", GAUGE,
          "The most compressed pages stored at once, by pool kind, a gauge.")
_per_pool("zcache.{pool}_zbytes", "zcache_compressed", GAUGE,
          "Compressed payload stored now, handles not counted, by pool kind, a gauge.", BYTES)
_per_pool("zcache.{pool}_zbytes_max", "zcache_compressed_max", GAUGE,
          "The most compressed payload stored at once, by pool kind, a gauge.", BYTES)
last_lru = _metric("zcache_last_lru", GAUGE, FRAMES,
                   "Size of each page LRU list the shrinker was last told about, which sets how much "
                   "it evicts and writes back, a gauge.", ("lru",))
for _lru in ("active_file", "inactive_file", "active_anon", "inactive_anon"):
    _declare(COUNTERS, f"zcache.last_{_lru}_pageframes", last_lru, _lru)
del last_lru, _lru
_per_pool("zcache.{pool}_nonactive_puts_ignored", "zcache_nonactive_puts_ignored", COUNTER,
          "Puts skipped because the page was never active (the WasActive filter), by pool kind.")
_gauge("zcache.outstanding_writeback_pages", "zcache_outstanding_writeback_pages",
       "Persistent pages on their way to a backing file now, a gauge.")
_counter("zcache.writtenback_pages", "zcache_writtenback_pages",
         "Persistent pages moved from memory to a backing file to make room.")
# zram's verbs, on the operator's word (zcache_reclaim.py)
_counter("zcache.marked_idle", "zcache_marked_idle_pages",
         "Pages marked idle by the operator (zram's idle mark), summed over every mark.")
_gauge("zcache.idle_pages", "zcache_idle_pages",
       "Pages held in frames not read, written or hit since the last idle mark, a gauge.")
_counter("zcache.written_back_idle", "zcache_written_back_idle_pages",
         "Idle persistent pages the operator's writeback moved to a backing file.")
_counter("zcache.written_back_huge", "zcache_written_back_huge_pages",
         "Uncompressed persistent pages the operator's writeback moved to a backing file.")
_counter("zcache.dropped_idle", "zcache_dropped_idle_pages",
         "Idle ephemeral pages the operator's writeback dropped (their file holds them).")
# recompression of cold pages with a second codec (zcache_recompress.py)
_counter("zcache.recompressed", "zcache_recompressed_pages",
         "Cold or uncompressible pages stored again with the recompression codec because it saved memory.")
_counter("zcache.recompress_skipped", "zcache_recompress_skipped_pages",
         "Pages recompression tried and left as they were, because the second codec saved no chunk.")
_counter("zcache.recompress_saved_bytes", "zcache_recompress_saved",
         "Stored bytes recompression saved, handles included, summed over every page it recompressed.", BYTES)
_gauge("zcache.zero_filled_pages", "zcache_zero_filled_pages",
       "Pages stored now as all zeros, taking no frame, a gauge.")
_gauge("zcache.same_filled_pages", "zcache_same_filled_pages",
       "Pages stored now as one repeated 8-byte word, taking no frame, a gauge.")
_gauge("zcache.huge_pages", "zcache_huge_pages",
       "Pages stored now uncompressed, a whole frame each, because they do not compress, a gauge.")
_gauge("zcache.huge_pages_max", "zcache_huge_pages_max", "The most uncompressed pages stored at once, a gauge.")
# dedup (dedup.py): identical pages stored once, on a node started with dedup
_counter("zcache.dedup_hits", "zcache_dedup_hits",
         "Puts whose page equalled a stored page byte for byte and shared its copy.")
_counter("zcache.dedup_collisions", "zcache_dedup_collisions",
         "Puts whose page had a stored page's hash but not its bytes, stored unshared.")
_gauge("zcache.dedup_pages", "zcache_dedup_pages",
       "Stored copies shared by two or more pages now, a gauge.")
_gauge("zcache.dedup_saved_pages", "zcache_dedup_saved_pages",
       "Pages held now without a copy of their own because they share one, a gauge.")
_counter("zcache.pageframes_alloced", "zcache_pageframes_alloced", "Page frames taken from the frame arena.")
_counter("zcache.pageframes_freed", "zcache_pageframes_freed", "Page frames given back to the frame arena.")
_gauge("zcache.max_pageframes", "zcache_pageframes_limit",
       "The memory budget: the most memory zcache may hold in page frames, a gauge.", FRAMES)

# ---- zbud (SPEC §3.9) ---------------------------------------------------------------------

_per_pool("zbud.{pool}_zbytes", "zbud_compressed", GAUGE,
          "Compressed data zbud stores now, its handles included, by pool kind, a gauge.", BYTES)
_per_pool("zbud.{pool}_cumul_zbytes", "zbud_compressed_added", COUNTER,
          "Compressed data ever stored in zbud, handles included, by pool kind.", BYTES)
_per_pool("zbud.{pool}_zpages", "zbud_zpages", GAUGE, "Zbuds (compressed pages) stored now, by pool kind, a gauge.")
_per_pool("zbud.{pool}_cumul_zpages", "zbud_zpages_added", COUNTER, "Zbuds ever stored, by pool kind.")
_per_pool("zbud.{pool}_pageframes", "zbud_pageframes", GAUGE,
          "Memory zbud holds now in page frames, by pool kind, a gauge.", FRAMES)
_per_pool("zbud.{pool}_evicted_pageframes", "zbud_evicted_pageframes", COUNTER,
          "Page frames evicted from the tail of zbud's LRU, by pool kind.")
_per_pool("zbud.{pool}_buddied_count", "zbud_buddied_pageframes", GAUGE,
          "Memory in page frames that hold two zbuds now, by pool kind, a gauge.", FRAMES)
_per_pool("zbud.{pool}_unbuddied_count", "zbud_unbuddied_pageframes", GAUGE,
          "Memory in page frames that hold one zbud and room for a buddy now, by pool kind, a gauge.", FRAMES)
_per_pool("zbud.{pool}_zombie_count", "zbud_zombie_pageframes", GAUGE,
          "Memory in page frames taken off the LRU (zombies) and not yet freed, by pool kind, a gauge.", FRAMES)

# ---- dense: the size-class allocator (dense.py), when a node runs with allocator = dense --------

_per_pool("dense.{pool}_zbytes", "dense_compressed", GAUGE,
          "Compressed data the dense allocator stores now, handles included, by pool kind, a gauge.", BYTES)
_per_pool("dense.{pool}_cumul_zbytes", "dense_compressed_added", COUNTER,
          "Compressed data ever stored in the dense allocator, handles included, by pool kind.", BYTES)
_per_pool("dense.{pool}_zpages", "dense_zpages", GAUGE,
          "Compressed pages the dense allocator stores now, by pool kind, a gauge.")
_per_pool("dense.{pool}_cumul_zpages", "dense_zpages_added", COUNTER,
          "Compressed pages ever stored in the dense allocator, by pool kind.")
_per_pool("dense.{pool}_pageframes", "dense_pageframes", GAUGE,
          "Memory the dense allocator's zspages hold now in page frames, by pool kind, a gauge.", FRAMES)
_per_pool("dense.{pool}_zspages", "dense_zspages", GAUGE,
          "Zspages (runs of 1-8 frames of one size class) held now, by pool kind, a gauge.")
_per_pool("dense.{pool}_evicted_pageframes", "dense_evicted_pageframes", COUNTER,
          "Page frames of zspages evicted from the head of the dense allocator's LRU, by pool kind.")
_per_pool("dense.{pool}_zombie_count", "dense_zombie_zspages", GAUGE,
          "Zspages taken off the LRU (zombies) and not yet freed, by pool kind, a gauge.")
_per_pool("dense.{pool}_frag_bytes", "dense_fragmentation", GAUGE,
          "Memory in the dense allocator's frames that holds no object (free slots, slack), by pool kind, a gauge.",
          BYTES)
_counter("dense.compactions", "dense_compactions", "Compaction runs of the dense allocator that freed frames.")
_counter("dense.objects_moved", "dense_objects_moved", "Compressed pages moved by compaction.")
_counter("dense.frames_compacted", "dense_frames_compacted", "Page frames compaction gave back to the arena.")
# cold groups: cold persistent pages compressed together by recompression (zcache_cold.py, coldlog.py)
_gauge("dense.cold_groups", "dense_cold_groups", "Cold groups (cold pages compressed together) held now, a gauge.")
_gauge("dense.cold_pages", "dense_cold_pages", "Pages held now in cold groups, a gauge.")
_gauge("dense.cold_zbytes", "dense_cold_compressed",
       "Compressed bytes of the cold groups held now (freed members' bytes included until their group goes), a gauge.",
       BYTES)
_gauge("dense.cold_pageframes", "dense_cold_pageframes", "Memory the cold log holds now in page frames, a gauge.",
       FRAMES)
_gauge("dense.cold_hole_bytes", "dense_cold_holes",
       "Bytes of the cold log freed groups left and compaction has not reclaimed yet, a gauge.", BYTES)
_counter("dense.cold_compactions", "dense_cold_compactions", "Compactions of the cold log.")
_counter("dense.cold_grouped", "dense_cold_grouped_pages", "Cold pages recompression put into cold groups.")
_counter("dense.cold_regrouped", "dense_cold_regrouped_pages",
         "Pages of sparse cold groups moved into new groups.")
_counter("dense.cold_written_back", "dense_cold_written_back_pages",
         "Pages of cold groups written to a backing file.")
_counter("dense.cold_refused", "dense_cold_refused_pages",
         "Pages of cold groups the writeback sink refused or had no place for (they stayed).")

# A node reports the "zbud." or the "dense." keys, those of the allocator it runs
# (Zcache(allocator=...)); every other key is reported by every node.
ALLOCATOR_KEYS = {name: frozenset(k for k in COUNTERS if k.startswith(name + "."))
                  for name in ("zbud", "dense")}

# ---- the front-ends -----------------------------------------------------------------------

_counter("frontswap.loads", "frontswap_loads", "Frontswap loads that found the page.")
_counter("frontswap.succ_stores", "frontswap_succ_stores", "Frontswap stores that kept the page.")
_counter("frontswap.failed_stores", "frontswap_failed_stores",
         "Frontswap stores refused (the page must go to the swap device).")
_counter("frontswap.invalidates", "frontswap_invalidates", "Frontswap page invalidations that dropped a page.")
_counter("cleancache.succ_gets", "cleancache_succ_gets", "Cleancache gets that found the page.")
_counter("cleancache.failed_gets", "cleancache_failed_gets", "Cleancache gets that missed.")
_counter("cleancache.puts", "cleancache_puts", "Cleancache puts offered, kept or not.")
_counter("cleancache.invalidates", "cleancache_invalidates",
         "Cleancache invalidations of a page, an inode or a whole filesystem.")

# ---- RAMster (SPEC §5.11, and what this implementation adds) ------------------------------

_per_pool("ramster.{pool}_pages_remoted", "pages_remoted", COUNTER,
          "Pages moved to a peer by the remotify worker, by pool kind.")
_per_pool("ramster.{pool}_pages_remote_failed", "pages_remote_failed", COUNTER,
          "Pages the remotify worker failed to put on a peer, by pool kind.")
_per_pool("ramster.remote_{pool}_pages_succ_get", "remote_pages_succ_get", COUNTER,
          "Gets of pages held by a peer that brought the data back, by pool kind.")
_per_pool("ramster.remote_{pool}_pages_unsucc_get", "remote_pages_unsucc_get", COUNTER,
          "Gets of pages held by a peer that brought no data back, by pool kind.")
_per_pool("ramster.{pool}_pages_remote_nomem", "pages_remote_nomem", COUNTER,
          "Pages fetched from a peer that found no local memory to land in.", pools=("pers",))
_counter("ramster.remote_objects_flushed", "remote_objects_flushed", "Object flushes sent to peers.")
_counter("ramster.remote_pages_flushed", "remote_pages_flushed", "Page flushes sent to peers.")
_counter("ramster.remote_object_flushes_failed", "remote_object_flushes_failed",
         "Object flushes a peer did not acknowledge.")
_counter("ramster.remote_page_flushes_failed", "remote_page_flushes_failed",
         "Page flushes a peer did not acknowledge.")
_counter("ramster.remote_pools_destroyed", "remote_pools_destroyed", "Pool destructions sent to peers.")
_counter("ramster.remote_pool_destroys_failed", "remote_pool_destroys_failed",
         "Pool destructions a peer did not acknowledge.")
_per_pool("ramster.remote_{pool}_pages_lost", "remote_pages_lost", COUNTER,
          "Pages whose every copy was on peers that lost them, read back as errors.", pools=("pers",))
_counter("ramster.remote_checksum_errors", "remote_checksum_errors",
         "Pages a peer returned whose checksum did not match what was sent.")
_counter("ramster.remote_gets_after_reconnect", "remote_gets_after_reconnect",
         "Remote gets that found no holder connected, waited for a lost connection to come back, and asked again.")
_counter("ramster.pages_rereplicated", "pages_rereplicated",
         "Copies of pages made again on another peer after a peer holding one went away.")
_gauge("ramster.remote_pages_short", "remote_pages_short",
       "Pages held by peers with fewer copies than configured, waiting for repair, a gauge.")
_per_pool("ramster.remote_{pool}_pages", "remote_pages", GAUGE,
          "This node's pages that live on peers now, by pool kind, a gauge.")
_per_pool("ramster.foreign_{pool}_pages", "foreign_pages", GAUGE,
          "Pages this node stores for peers now, by pool kind, a gauge.")
_per_pool("ramster.foreign_{pool}_pages_max", "foreign_pages_max", GAUGE,
          "The most pages this node has stored for peers at once, by pool kind, a gauge.")
_counter("ramster.auth_failures", "auth_failures",
         "Peer connections refused because the node's signature did not verify.")
_counter("ramster.compressor_mismatches", "compressor_mismatches",
         "Peer connections refused because the node compresses with another codec.")
_counter("ramster.handshakes_refused", "handshakes_refused",
         "Peer connections refused during the handshake, for any reason.")

_per_pool("ramster.{pool}_remotify_enable", "remotify_enabled", GAUGE,
          "1 while the remotify worker may move pages of the pool kind to peers, else 0 "
          "(the seed's sysfs switch of that name), a gauge.")
_gauge("ramster.selfshrink_enable", "selfshrink_enabled",
       "1 while remote swap pages are brought home when the node is idle (selfshrink), else 0, a gauge.")

# ---- runtime control (ramster ctl, SIGHUP) ------------------------------------------------

changes = _metric("control_changes", COUNTER, NUMBER,
                  "Runtime settings changed by `ramster ctl` or a reload, by setting.", ("setting",))
for _key, _setting in (("memory_changes", "memory"), ("log_level_changes", "log_level"),
                       ("eph_remotify_switches", "eph_remotify"), ("pers_remotify_switches", "pers_remotify"),
                       ("selfshrink_switches", "selfshrink"), ("target_changes", "targets"),
                       ("peers_marked_down", "peer_down"), ("peers_marked_up", "peer_up")):
    _declare(COUNTERS, f"control.{_key}", changes, _setting)
actions = _metric("control_actions", COUNTER, NUMBER,
                  "Actions run by `ramster ctl` (selfshrink, mark-idle, writeback, recompress, compact), by action.", ("action",))
for _key, _action in (("selfshrinks", "selfshrink"), ("idle_marks", "mark_idle"),
                      ("idle_writebacks", "writeback_idle"), ("huge_writebacks", "writeback_huge"),
                      ("recompressions", "recompress"), ("compactions", "compact")):
    _declare(COUNTERS, f"control.{_key}", actions, _action)
del changes, actions, _key, _setting, _action
_counter("control.reloads", "control_reloads", "Reloads of the config file (SIGHUP or `ramster ctl reload`).")
_counter("control.reload_failures", "control_reload_failures",
         "Reloads that could not read the config file; the running settings stayed.")
_counter("control.requests", "control_requests", "Requests served on the control socket.")
_counter("control.requests_refused", "control_requests_refused",
         "Control socket connections refused because the caller is neither the node's user nor root.")

# ---- the heap (heaptrim.py) ----------------------------------------------------------------
_counter("heap.trims", "heap_trims", "Times the node gave its heap's free memory back to the kernel (malloc_trim).")
_counter("heap.trimmed_bytes", "heap_trimmed", "Bytes the node's RSS fell by in those trims.", BYTES)
_gauge("heap.untrimmed_traffic_bytes", "heap_untrimmed_traffic",
       "Bytes read, written or recompressed since the last heap trim, a gauge; the next trim comes once the "
       "node is quiet.", BYTES)

# ---- NBD exports: labels export and kind, then the metric's own ---------------------------

EXPORT_LABELS = ("export", "kind")
_requests = _metric("export_requests", COUNTER, NUMBER, "NBD requests an export served, by command.",
                    (*EXPORT_LABELS, "command"))
for _field, _command in (("reads", "read"), ("writes", "write"), ("trims", "trim"), ("zeroes", "write_zeroes"),
                         ("flushes", "flush"), ("caches", "cache"), ("block_status", "block_status")):
    _declare(EXPORT_STATS, f"counters.{_field}", _requests, _command)
_io = _metric("export_io", COUNTER, BYTES, "Data read from and written to an export by its clients, by direction.",
              (*EXPORT_LABELS, "direction"))
_declare(EXPORT_STATS, "counters.bytes_read", _io, "read")
_declare(EXPORT_STATS, "counters.bytes_written", _io, "write")
del _requests, _io, _field, _command


def _export(key: str, base: str, kind: str, help: str, unit: str = NUMBER) -> None:
    _declare(EXPORT_STATS, key, _metric(base, kind, unit, help, EXPORT_LABELS))


_export("size", "export_size", GAUGE, "The size clients see of an export, a gauge.", BYTES)
_export("counters.errors", "export_errors", COUNTER, "NBD requests an export answered with an error.")
_export("counters.backing_writes", "export_backing_writes", COUNTER,
        "Pages an export wrote to its backing file itself: a swap export's that memory refused, "
        "every page a cache export's writes touch.")
_export("counters.backing_reads", "export_backing_reads", COUNTER,
        "Pages an export read from its backing file: a swap export's written back or refused pages, "
        "a cache export's misses and prefetches.")
_export("counters.written_back", "export_written_back_pages", COUNTER,
        "Pages a swap export moved from memory to its backing file.")
_export("counters.failed_writes", "export_failed_writes", COUNTER,
        "Pages a swap export could store neither in memory nor in a backing file.")
_export("gauges.lost_pages", "export_lost_pages", GAUGE,
        "Pages of a swap export whose data is gone and that read back as errors until rewritten, a gauge.")
_export("counters.cache_hits", "export_cache_hits", COUNTER, "Pages a cache export read from memory.")
_export("counters.cache_misses", "export_cache_misses", COUNTER,
        "Pages a cache export read from its backing file (and then cached).")

# ---- the dense allocator's size classes: labels pool and class_size ------------------------
CLASS_LABELS = ("pool", "class_size")


def _class(key: str, base: str, help: str, unit: str = NUMBER) -> None:
    _declare(CLASS_STATS, key, _metric(base, GAUGE, unit, help, CLASS_LABELS))


_class("objects", "dense_class_objects", "Objects (compressed pages) a size class holds now, a gauge.")
_class("zspages", "dense_class_zspages", "Zspages of a size class now, a gauge.")
_class("frames", "dense_class_frames", "Memory the zspages of a size class hold now, a gauge.", FRAMES)
_class("unused_bytes", "dense_class_unused",
       "Memory of a size class's zspages that holds no object (fragmentation), a gauge.", BYTES)

# ---- peers: label peer --------------------------------------------------------------------


def _peer(key: str, base: str, kind: str, help: str, unit: str = NUMBER) -> None:
    _declare(PEER_STATS, key, _metric(base, kind, unit, help, ("peer",)))


_peer("connected", "peer_connected", GAUGE, "1 while the connection to the peer is up, else 0, a gauge.")
_peer("rtt_seconds", "peer_rtt", GAUGE, "Keepalive round trip to the peer, smoothed, a gauge.", SECONDS)
_peer("free_frames", "peer_free", GAUGE, "Memory the peer last reported free for other nodes' pages, a gauge.",
      FRAMES)
_peer("refused", "peer_refused", COUNTER, "Connections claiming to be the peer that this node refused.")
_peer("pages_held", "peer_pages_held", GAUGE, "This node's pages the peer holds a copy of now, a gauge.")
_peer("pages_only_copy", "peer_pages_only_copy", GAUGE,
      "This node's pages whose only copy the peer holds now, a gauge.")
_peer("target", "peer_target", GAUGE, "1 while remotify may put new pages on the peer, else 0, a gauge.")
_peer("down", "peer_down", GAUGE,
      "1 while the peer is marked down by `ramster ctl peer NAME down` (no new pages, not asked), a gauge.")

# ---- the node -----------------------------------------------------------------------------

BUILD_INFO = _metric("build_info", GAUGE, NUMBER, "Always 1; the label says which ramster version runs.",
                     ("version",))
# What /stats shows that is no sample of its own, and why.
DESCRIPTIVE: dict[str, str] = {
    "node.version": "the version label of ramster_build_info",
    "node.pid": "process_* metrics describe the process",
    "node.uptime_seconds": "process_start_time_seconds gives it",
    "node.memory": "ramster_zcache_pageframes_limit_bytes",
    "node.compressor": "configuration, not a measurement",
    "node.allocator": "configuration, not a measurement",
    "node.dedup": "configuration, not a measurement",
    "node.recompress_codec": "configuration, not a measurement",
    "node.recompress_cpu": "configuration, not a measurement",
    "node.recompress_groups": "configuration, not a measurement",
    "node.page_size": "a constant, PAGE_SIZE",
    "node.listen": "configuration, not a measurement",
    "node.metrics": "configuration, not a measurement",
    "node.log_level": "configuration, not a measurement",
    "node.control": "a path, not a measurement",
    "exports.kind": "the kind label",
    "exports.backing": "a path, not a measurement",
    "peers.name": "the peer label",
    "peers.number": "the peer's node number, configuration",
    "classes.pool": "the pool label",
    "classes.size": "the class_size label",
    "classes.frames_per_zspage": "the class's geometry, a constant",
    "classes.objs_per_zspage": "the class's geometry, a constant",
}


def undeclared(stats: dict) -> list[str]:
    """The keys of a /stats document this module does not declare (sorted; [] when all are).

    Keys are spelled as the tables above spell them: a counter by its seed name,
    "exports.counters.reads", "peers.rtt_seconds", "node.pid", and a part this
    module does not know by its own name."""
    out = set()
    for part, value in stats.items():
        if part == "counters":
            out.update(k for k in value if k not in COUNTERS)
        elif part == "exports":
            for e in value.values():
                for field, v in e.items():
                    if field in ("counters", "gauges"):
                        out.update(f"exports.{field}.{k}" for k in v if f"{field}.{k}" not in EXPORT_STATS)
                    elif field not in EXPORT_STATS and f"exports.{field}" not in DESCRIPTIVE:
                        out.add(f"exports.{field}")
        elif part == "peers":
            for p in value:
                out.update(f"peers.{k}" for k in p if k not in PEER_STATS and f"peers.{k}" not in DESCRIPTIVE)
        elif part == "node":
            out.update(f"node.{k}" for k in value if f"node.{k}" not in DESCRIPTIVE)
        elif part == "classes":
            for row in value:
                out.update(f"classes.{k}" for k in row if k not in CLASS_STATS and f"classes.{k}" not in DESCRIPTIVE)
        else:
            out.add(part)
    return sorted(out)
