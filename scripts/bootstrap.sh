#!/usr/bin/env bash
# Create or refresh .venv and install everything ramster and its tests need:
# Debian packages (liblzo2-dev for python-lzo; the real NBD clients the tests
# drive) and the Python package itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

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
missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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
