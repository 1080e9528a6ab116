#!/usr/bin/env bash
# Builds the VM package from the release binary (cargo deb --no-build), installs it for real,
# checks what it put on the machine, and removes and purges it again. For CI and throwaway
# machines: it needs root, and refuses to run where istio-sidecar or outrigger-sidecar is
# already installed. systemd need not be running (systemd-analyze verify works without it).
#
#   packaging/check-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'check-deb: FAIL: %s\n' "$*" >&2; exit 1; }
step() { printf '== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
for pkg in outrigger-sidecar istio-sidecar; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
        fail "$pkg is installed here; this check installs and purges the package itself"
    fi
done

step "cargo deb -p outrigger --no-build"
deb=$(cargo deb -p outrigger --no-build --fast 2>/dev/null | tail -n 1)
[ -f "$deb" ] || fail "cargo deb made no package (got: $deb)"
printf '   %s (%s)\n' "$deb" "$(du -h "$deb" | cut -f1)"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Conflicts\): /   \1: /p'
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/local/bin/outrigger './usr/local/bin/pilot-agent -> outrigger' \
    './usr/local/bin/envoy -> outrigger' ./lib/systemd/system/istio.service \
    ./var/lib/istio/envoy/sidecar.env; do
    grep -qF -- "$path" <<<"$contents" || fail "the package lacks $path"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /var/lib/istio/envoy/sidecar.env ||
    fail "sidecar.env is not a conffile"

# The package leaves an existing /etc/istio alone; on this throwaway machine there should be none.
had_etc_istio=false
[ -e /etc/istio ] || [ -L /etc/istio ] && had_etc_istio=true
had_user=false
getent passwd istio-proxy >/dev/null && had_user=true

step "dpkg -i"
dpkg -i "$deb"
uid=$(id -u istio-proxy) || fail "no istio-proxy user"
gid=$(id -g istio-proxy)
[ "$(getent passwd istio-proxy | cut -d: -f6)" = /var/lib/istio ] || fail "istio-proxy's home is not /var/lib/istio"
[ "$(id -gn istio-proxy)" = istio-proxy ] || fail "istio-proxy's group is not istio-proxy"
$had_user || [ "$uid" = "$gid" ] || fail "a new istio-proxy user got uid $uid but gid $gid"
printf '   istio-proxy: uid %s gid %s\n' "$uid" "$gid"
for dir in /var/lib/istio/envoy /var/lib/istio/proxy /var/lib/istio/config /var/log/istio /etc/certs; do
    [ "$(stat -c %U:%G "$dir")" = istio-proxy:istio-proxy ] || fail "$dir is not owned by istio-proxy"
done
[ -f /var/lib/istio/config/mesh ] || fail "no /var/lib/istio/config/mesh"
if ! $had_etc_istio; then
    [ "$(readlink /etc/istio)" = /var/lib/istio ] || fail "/etc/istio is not a link to /var/lib/istio"
fi
# Through the names and paths the unit and Istio's runbooks use.
/usr/local/bin/pilot-agent istio-iptables --dry-run -p 15001 -z 15006 -u "$uid" -m REDIRECT \
    -i '*' -b '*' 2>/dev/null | grep -qF -- "--uid-owner $uid -j RETURN" || fail "pilot-agent istio-iptables"
/usr/local/bin/envoy --version | grep -q outrigger || fail "envoy --version"

step "systemd-analyze verify istio.service"
# Checks the unit's syntax, that its binaries exist and that the user resolves; no systemd
# manager needs to be running. --man=no: the documentation link is a web page.
systemd-analyze verify --man=no /lib/systemd/system/istio.service
unit=$(cat /lib/systemd/system/istio.service)
for line in 'EnvironmentFile=-/var/lib/istio/envoy/sidecar.env' \
    'EnvironmentFile=-/var/lib/istio/envoy/cluster.env' 'User=istio-proxy' 'WorkingDirectory=/' \
    'ExecStart=/usr/local/bin/outrigger proxy sidecar'; do
    grep -qF -- "$line" <<<"$unit" || fail "istio.service lacks: $line"
done

step "dpkg -r, then dpkg --purge"
dpkg -r outrigger-sidecar
[ ! -e /usr/local/bin/outrigger ] && [ ! -L /usr/local/bin/pilot-agent ] && [ ! -L /usr/local/bin/envoy ] ||
    fail "binaries left after dpkg -r"
[ ! -e /lib/systemd/system/istio.service ] || fail "istio.service left after dpkg -r"
[ -e /var/lib/istio/envoy/sidecar.env ] || fail "dpkg -r removed the conffile sidecar.env"
dpkg --purge outrigger-sidecar
[ ! -e /var/lib/istio/envoy/sidecar.env ] || fail "sidecar.env left after purge"
if ! $had_etc_istio; then
    [ ! -L /etc/istio ] || fail "/etc/istio link left after purge"
    [ ! -e /var/lib/istio ] || fail "/var/lib/istio left after purge: $(ls -A /var/lib/istio)"
fi
# The istio-proxy user stays on purpose (see packaging/vm/postrm); a user made by this check goes.
if ! $had_user; then
    userdel istio-proxy
    getent group istio-proxy >/dev/null && groupdel istio-proxy
fi
echo "check-deb: OK"
