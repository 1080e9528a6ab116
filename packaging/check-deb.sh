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

netns=outrigger-deb-$$
# Whatever happens, leave the machine as it was: no package, no namespace, no user made here.
cleanup() {
    ip netns del "$netns" 2>/dev/null || true
    if dpkg-query -W -f='${Status}' outrigger-sidecar 2>/dev/null | grep -q installed; then
        dpkg --purge outrigger-sidecar >/dev/null 2>&1 || true
    fi
    if ! $had_user && getent passwd istio-proxy >/dev/null; then
        userdel istio-proxy
        if getent group istio-proxy >/dev/null; then groupdel istio-proxy; fi
    fi
}
trap cleanup EXIT

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

step "the unit's capture commands, run as systemd would, in a network namespace"
# systemd unquotes the single-quoted sh -c argument and turns $$ into $; the environment is
# what `istioctl x workload entry configure` writes into cluster.env (the keys of its golden,
# istio/istio istioctl/pkg/workload/testdata/vmconfig/ipv4/cluster.env.golden; our values).
unit_command() { # the sh -c script of the first line starting with $1
    grep -m1 "^$1" /lib/systemd/system/istio.service | sed -e "s/^[^']*'//" -e "s/'[^']*\$//" -e 's/\$\$/$/g'
}
start=$(unit_command 'ExecStartPre=+/bin/sh -c')
stop=$(unit_command 'ExecStopPost=+/bin/sh -c')
[ -n "$start" ] && [ -n "$stop" ] || fail "no capture commands in istio.service"
cluster_env="ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_NAMESPACE='check'
ISTIO_SERVICE_CIDR='*'
ISTIO_SVC_IP='10.10.10.10'
POD_NAMESPACE='check'"
in_netns() { # $1: extra environment (KEY=value), $2: command; with cluster.env's environment
    ( set -a; eval "$cluster_env"; eval "$1"; set +a
      cd / && ip netns exec "$netns" sh -c "$2" ) >"$log" 2>&1 || { cat "$log" >&2; fail "unit command failed: $2"; }
}
istio_rules() { ip netns exec "$netns" sh -c 'iptables-nft-save; iptables-legacy-save' 2>/dev/null | grep ISTIO_ || true; }
log=$(mktemp)
new_netns() { # istio-iptables needs a non-loopback address, as in a VM
    ip netns del "$netns" 2>/dev/null || true
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    ip -n "$netns" link add eth0 type veth peer name eth1
    ip -n "$netns" addr add 10.10.10.10/24 dev eth0
    ip -n "$netns" link set eth0 up && ip -n "$netns" link set eth1 up
}
new_netns
in_netns '' "$start"
rules=$(istio_rules)
grep -qF -- "--uid-owner $uid -j RETURN" <<<"$rules" || fail "no capture rules exempt istio-proxy: $rules"
grep -qF -- "--to-ports 15006" <<<"$rules" || fail "no inbound capture: $rules"
in_netns '' "$stop"
[ -z "$(istio_rules)" ] || fail "ExecStopPost left rules: $(istio_rules)"
printf '   ExecStartPre: %s ISTIO_ rules, uid %s exempt; ExecStopPost: none left\n' "$(wc -l <<<"$rules")" "$uid"
new_netns
in_netns 'ISTIO_CUSTOM_IP_TABLES=true' "$start"
[ -z "$(istio_rules)" ] || fail "ISTIO_CUSTOM_IP_TABLES=true still captured: $(istio_rules)"
ip netns del "$netns"
rm -f "$log"
printf '   ISTIO_CUSTOM_IP_TABLES=true: no rules\n'

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
# The istio-proxy user stays on purpose (see packaging/vm/postrm); cleanup removes the one
# this check made.
echo "check-deb: OK"
