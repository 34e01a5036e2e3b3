#!/bin/bash
# The capture in docs/stats-vs-zramctl.md: one image written to a zram device (lz4) and to a
# ramster swap export of the same size, then zramctl and `ramster stats` on both.
#
#   sudo bash docs/stats-vs-zramctl.sh IMAGE [RAMSTER]
#
# IMAGE: whole 4 KiB pages (the capture used ../shared/corpus/*.pages, concatenated).
# RAMSTER: the command to run ramster (default: the venv's, .venv/bin/ramster).
# Needs root (a zram device is added with /sys/class/zram-control/hot_add and removed after),
# util-linux (zramctl), nbdcopy and curl. The node gets memory for the whole image, and its
# export has no backing file, so that both sides keep every page in memory.
set -euo pipefail
image=$(realpath "$1")
ramster=${2:-$(dirname "$0")/../.venv/bin/ramster}
size=$(stat -c %s "$image")
work=$(mktemp -d)
port=19106
sock=$work/nbd.sock
node=
zram=
cleanup() {
    if [ -n "$zram" ] && [ -e /sys/block/zram$zram ]; then
        echo 1 > /sys/block/zram$zram/reset
        echo "$zram" > /sys/class/zram-control/hot_remove
    fi
    [ -n "$node" ] && kill "$node" && wait "$node" || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== the image: $size bytes, $((size / 4096)) pages"
$ramster node --listen "unix:$sock" --metrics 127.0.0.1:$port --memory "$size" \
    --export "swap:swap:$size" > "$work/node.out" 2> "$work/node.err" &
node=$!
for _ in $(seq 200); do curl -sf 127.0.0.1:$port/stats > /dev/null && break; sleep 0.1; done
zram=$(cat /sys/class/zram-control/hot_add)
zramctl --size "$size" --algorithm lz4 /dev/zram$zram
# no sparseness detection: zero pages are written as data, to both
nbdcopy --sparse=0 --no-extents "$image" /dev/zram$zram
nbdcopy --sparse=0 --no-extents "$image" "nbd+unix:///swap?socket=$sock"
cmp "$image" /dev/zram$zram && echo "zram reads back the image"
nbdcopy "nbd+unix:///swap?socket=$sock" - | cmp - "$image" && echo "ramster reads back the image"
echo "== zramctl --output-all /dev/zram$zram"
zramctl --output-all /dev/zram$zram
echo "== zramctl --output-all --bytes /dev/zram$zram"
zramctl --output-all --bytes /dev/zram$zram
echo "== /sys/block/zram$zram/mm_stat"
cat /sys/block/zram$zram/mm_stat
echo "== ramster stats --output-all"
$ramster stats --url 127.0.0.1:$port --output-all
echo "== ramster stats --output-all --bytes"
$ramster stats --url 127.0.0.1:$port --output-all --bytes
echo "== the counters behind them"
curl -s 127.0.0.1:$port/stats | python3 -c '
import json, sys
c = json.load(sys.stdin)["counters"]
for k in ("zcache.pers_zpages", "zbud.pers_zpages", "zcache.pers_zbytes", "zcache.pers_pageframes",
          "zcache.huge_pages", "zcache.zero_filled_pages", "zcache.same_filled_pages",
          "zbud.pers_buddied_count", "zbud.pers_unbuddied_count", "zcache.max_pageframes"):
    print(f"{k:28} {c[k]}")'
