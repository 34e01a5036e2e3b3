#!/usr/bin/env bash
# Create or refresh .venv and install everything ramster and its tests need:
# Debian packages (liblzo2-dev for python-lzo; the real NBD clients the tests
# drive) and the Python package itself in editable mode.
#
#   --test   also what only the test suite needs: QEMU, a Debian kernel,
#            busybox-static, musl-tools and gcc, for the Linux guest of tests/guest;
#            prometheus for promtool, which checks a node's /metrics; and --bench's
#   --bench  also what `ramster bench` needs beyond the NBD clients: redis-server,
#            the baseline of `ramster bench cluster` (redis-py comes with the venv's
#            bench extra)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0 with_bench=0
for arg in "$@"; do
    case $arg in
        --test) with_tests=1 with_bench=1 ;;  # the test suite runs every benchmark, small
        --bench) with_bench=1 ;;
        *) echo "bootstrap: unknown option $arg (known: --test, --bench)" >&2; exit 2 ;;
    esac
done

# Debian's own python3 (built with PGO and LTO) runs the engine's Python about 20%
# faster than a plain source build, and python3-libnbd is built for it: prefer it.
py=${PYTHON:-}
if [[ -z $py ]]; then
    if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py=/usr/bin/python3
    else
        py=python3
    fi
fi

debs=(liblzo2-dev nbdkit libnbd-bin python3-libnbd fio qemu-utils)
if [[ $py == /usr/bin/python3 ]]; then
    debs+=(python3-venv python3-dev)  # venv's ensurepip, and headers to build python-lzo
fi
if ((with_bench)); then
    debs+=(redis-server)
fi
test_debs=()
if ((with_tests)); then
    test_debs=(qemu-system-x86 linux-image-cloud-amd64 busybox-static musl-tools gcc  # musl-gcc runs gcc
               prometheus)  # Debian ships promtool only in the server's package
fi
is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
missing=() test_missing=()
for p in "${debs[@]}"; do
    is_installed "$p" || missing+=("$p")
done
for p in "${test_debs[@]}"; do
    is_installed "$p" || test_missing+=("$p")
done
all_missing=("${missing[@]}" "${test_missing[@]}")
if ((${#all_missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${all_missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${all_missing[*]}"
    apt-get update -qq
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ((${#test_missing[@]})); then
        # without recommends: QEMU's would bring a GUI, the kernel's firmware; the guest needs neither
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${test_missing[@]}" >/dev/null
    fi
fi

want=$("$py" -c 'import sys; print(sys.executable, sys.version)')
if [[ -x .venv/bin/python ]] && [[ $(cat .venv/.interpreter 2>/dev/null) != "$want" ]]; then
    rm -rf .venv  # made by another interpreter: rebuild
fi
if [[ ! -x .venv/bin/python ]]; then
    "$py" -m venv .venv
    echo "$want" > .venv/.interpreter
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test,bench]"

# python3-libnbd is Debian-only: expose just its two files to the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
nbddir=$(pwd)/.venv/debian-libnbd
mkdir -p "$nbddir"
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod*.so; do
    [[ -e $f ]] && ln -sf "$f" "$nbddir/"
done
echo "$nbddir" > "$site/debian-libnbd.pth"
