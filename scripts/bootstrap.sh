#!/usr/bin/env bash
# Create or refresh .venv and install everything ramster and its tests need:
# Debian packages (liblzo2-dev for python-lzo; the real NBD clients the tests
# drive) and the Python package itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(liblzo2-dev nbdkit libnbd-bin python3-libnbd fio qemu-utils)
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

py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"

# python3-libnbd is Debian-only: expose just its two files to the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
nbddir=$(pwd)/.venv/debian-libnbd
mkdir -p "$nbddir"
for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod*.so; do
    [[ -e $f ]] && ln -sf "$f" "$nbddir/"
done
echo "$nbddir" > "$site/debian-libnbd.pth"
