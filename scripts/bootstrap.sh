#!/usr/bin/env bash
# Create or refresh .venv with ramster in editable mode, and the Debian packages it uses.
# Without flags: what a node needs (python3-venv) and the NBD clients README's examples use
# (libnbd-bin: nbdinfo, nbdcopy; qemu-utils: qemu-img; curl), and ramster's runtime
# Python dependencies only.
#
#   --lzo    the lzo compressor: python-lzo, built from source (gcc, liblzo2-dev, python3-dev)
#   --bench  what `ramster bench` needs: redis-server (the cluster baseline), nbdkit and fio
#            (the NBD benchmark), and the bench extra (redis-py, matplotlib)
#   --test   what the test suite needs: --bench and --lzo, the test extra (pytest,
#            hypothesis), libnbd's Python binding, and for the Linux guest of tests/guest
#            QEMU, a Debian kernel, busybox-static, musl-tools and gcc; prometheus for
#            promtool, which checks a node's /metrics; systemd for systemd-analyze,
#            which checks the example unit contrib/ramster.service
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0 with_bench=0 with_lzo=0
for arg in "$@"; do
    case $arg in
        --test) with_tests=1 with_bench=1 with_lzo=1 ;;  # the test suite runs every benchmark, small
        --bench) with_bench=1 ;;
        --lzo) with_lzo=1 ;;
        *) echo "bootstrap: unknown option $arg (known: --test, --bench, --lzo)" >&2; exit 2 ;;
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

debs=(libnbd-bin qemu-utils curl)
extras=()
if [[ $py == /usr/bin/python3 ]]; then
    debs+=(python3-venv)  # venv's ensurepip
fi
if ((with_lzo)); then
    debs+=(liblzo2-dev gcc)
    if [[ $py == /usr/bin/python3 ]]; then
        debs+=(python3-dev)
    fi
    extras+=(lzo)
fi
if ((with_bench)); then
    debs+=(redis-server nbdkit fio)
    extras+=(bench)
fi
test_debs=()
if ((with_tests)); then
    debs+=(python3-libnbd)
    extras+=(test)
    test_debs=(qemu-system-x86 linux-image-cloud-amd64 busybox-static musl-tools gcc  # musl-gcc runs gcc
               prometheus  # Debian ships promtool only in the server's package
               systemd)  # systemd-analyze verifies contrib/ramster.service
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
spec=.
if ((${#extras[@]})); then
    spec=".[$(IFS=,; echo "${extras[*]}")]"
fi
.venv/bin/python -m pip install -q -e "$spec"

# python3-libnbd is Debian-only: expose just its two files to the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
nbddir=$(pwd)/.venv/debian-libnbd
mkdir -p "$nbddir"
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod*.so; do
    [[ -e $f ]] && ln -sf "$f" "$nbddir/"
done
echo "$nbddir" > "$site/debian-libnbd.pth"
echo "bootstrap: ready: .venv/bin/ramster (or \`. .venv/bin/activate\`, then \`ramster\`)"
