#!/usr/bin/env bash
# Checks the container image without a container engine (CI has none): it assembles the
# runtime stage's filesystem layout in a temporary directory with the same script the
# Dockerfile runs (packaging/image-layout.sh), calls the binary through Istio's names as the
# injected pod does, and runs the sidecar as the pod runs it: uid/gid 1337, no capabilities, no
# privilege escalation, a read-only root with only the emptyDir paths writable, in a network
# namespace of its own (so Istio's real ports are used and nothing on the host is in the way).
#
#   packaging/check-image-layout.sh [BINARY]
#
# BINARY defaults to the release build (CARGO_TARGET_DIR honoured). Needs root (mount and
# network namespaces, chroot), util-linux (unshare, setpriv), iproute2 and curl. Istio's golden
# bootstraps are read from ../shared/vectors beside the repository (OUTRIGGER_VECTORS overrides).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
binary=${1:-${CARGO_TARGET_DIR:-$repo/target}/release/outrigger}
vectors=${OUTRIGGER_VECTORS:-$repo/../shared/vectors}
golden=$vectors/istio-bootstrap/default_golden.json

step() { printf '== %s\n' "$*"; }
fail() { printf 'check-image-layout: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (namespaces, chroot)"
[ -x "$binary" ] || fail "no binary at $binary (run packaging/build-release.sh)"
[ -r "$golden" ] || fail "no Istio golden bootstrap at $golden"

work=$(mktemp -d /tmp/outrigger-image.XXXXXX)
chmod 0755 "$work"
netns=outrigger-image-$$
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "the Dockerfile uses the shared scripts and Istio's entrypoint conventions"
dockerfile=$repo/Dockerfile
# shellcheck disable=SC2016 # the Dockerfile's own ${...}, matched literally
for line in 'packaging/build-release.sh /out' 'sh /tmp/image-layout.sh /' 'WORKDIR /' \
    'USER 1337:1337' 'ENTRYPOINT ["/usr/local/bin/pilot-agent"]' \
    'ENV ISTIO_META_ISTIO_PROXY_SHA=outrigger-${OUTRIGGER_VERSION}'; do
    grep -qF -- "$line" "$dockerfile" || fail "Dockerfile lacks: $line"
done
cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
image_version=$(sed -n 's/^ARG OUTRIGGER_VERSION=//p' "$dockerfile")
[ "$cargo_version" = "$image_version" ] ||
    fail "Dockerfile OUTRIGGER_VERSION=$image_version, Cargo.toml version $cargo_version"
rust_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
grep -qx "FROM rust:$rust_version-bookworm AS build" "$dockerfile" ||
    fail "the build stage is not on rust:$rust_version-bookworm (rust-version in Cargo.toml)"

step "runtime layout (packaging/image-layout.sh) in $work/root"
root=$work/root
sh "$repo/packaging/image-layout.sh" "$root" "$binary"
bin=$root/usr/local/bin
for name in pilot-agent envoy; do
    [ "$(readlink "$bin/$name")" = outrigger ] || fail "$name is not a link to outrigger"
done
mapfile -t writable < <(sh "$repo/packaging/image-layout.sh" --writable)
for dir in "${writable[@]}"; do
    [ "$(stat -c %u:%g:%a "$root$dir")" = 1337:1337:755 ] || fail "$dir is not 1337:1337 0755"
done

step "the binary needs no file capabilities or set-id bits"
[ -z "$(getcap "$bin/outrigger" 2>/dev/null || true)" ] || fail "outrigger has file capabilities"
[ "$(stat -c %a "$bin/outrigger")" = 755 ] || fail "outrigger mode is not 0755"

step "pilot-agent istio-iptables --dry-run (the istio-init container's args)"
plan=$("$bin/pilot-agent" istio-iptables -p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' \
    -x '' -b '*' -d 15090,15021,15020 --log_output_level=default:info --dry-run 2>/dev/null)
for rule in '-A OUTPUT -j ISTIO_OUTPUT' '-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001' \
    '-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006'; do
    grep -qF -- "$rule" <<<"$plan" || fail "the dry-run plan lacks: $rule"
done

step "envoy --mode validate -c <Istio's default golden bootstrap>"
out=$("$bin/envoy" --mode validate -c "$golden" 2>/dev/null) || fail "validate failed: $out"
grep -q "OK" <<<"$out" || fail "validate did not say OK: $out"

step "pilot-agent proxy router is refused with a message"
if out=$("$bin/pilot-agent" proxy router --domain x.svc.cluster.local 2>&1 </dev/null); then
    fail "proxy router succeeded: $out"
fi
grep -qi router <<<"$out" || fail "proxy router failed without naming the node type: $out"
printf '   %s\n' "${out%%$'\n'*}"

step "pilot-agent wait / request (the lifecycle hooks) are dispatched"
for sub in wait request; do
    "$bin/pilot-agent" "$sub" --help >/dev/null 2>&1 || fail "pilot-agent $sub is not dispatched"
    printf '   pilot-agent %s --help: OK\n' "$sub"
done

step "the sidecar as the injected pod runs it: uid 1337, no capabilities, read-only root"
# The runtime image's shared libraries and setpriv (util-linux is in bookworm-slim too).
for exe in "$bin/outrigger" "$(command -v setpriv)"; do
    for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
done
install -D -m 0755 "$(command -v setpriv)" "$root/usr/bin/setpriv"
mkdir -p "$root/proc" "$root/dev"
ip netns add "$netns"
ip -n "$netns" link set lo up
# discoveryAddress: a plaintext port where nobody listens (no control plane here; the proxy
# keeps retrying and serves its admin API meanwhile). terminationDrainDuration: a short drain.
proxy_config='{"discoveryAddress":"127.0.0.1:15010","terminationDrainDuration":"1s"}'
writable_list="${writable[*]}"
# shellcheck disable=SC2016 # the inner script expands its variables itself
env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin POD_NAME=check-0 POD_NAMESPACE=default \
    INSTANCE_IP=127.0.0.1 SERVICE_ACCOUNT=default ISTIO_META_CLUSTER_ID=Kubernetes \
    PROXY_CONFIG="$proxy_config" ROOT="$root" WRITABLE="$writable_list" \
    ip netns exec "$netns" unshare --mount --propagation private sh -ec '
        mount --bind "$ROOT" "$ROOT"
        mount -o remount,bind,ro "$ROOT"
        mount -t proc proc "$ROOT/proc"
        mount --rbind /dev "$ROOT/dev"
        for dir in $WRITABLE; do
            mount -t tmpfs -o mode=0755,uid=1337,gid=1337,size=16m tmpfs "$ROOT$dir"
        done
        cd "$ROOT"
        exec chroot "$ROOT" /usr/bin/setpriv --reuid=1337 --regid=1337 --clear-groups \
            --inh-caps=-all --bounding-set=-all --no-new-privs \
            /usr/local/bin/pilot-agent proxy sidecar --domain default.svc.cluster.local \
            --proxyLogLevel=warning --proxyComponentLogLevel=misc:error \
            --log_output_level=default:info
    ' >"$work/sidecar.log" 2>&1 &
pid=$!

info=
for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; fail "the sidecar exited early"; }
    if info=$(ip netns exec "$netns" curl -sf --max-time 1 http://127.0.0.1:15000/server_info); then
        break
    fi
    sleep 0.2
done
[ -n "$info" ] || { cat "$work/sidecar.log" >&2; fail "no /server_info on 127.0.0.1:15000"; }
grep -q '"state"' <<<"$info" || fail "/server_info: $info"
printf '   /server_info: %s\n' "$(tr -d ' \n' <<<"$info" | cut -c1-120)"

status=/proc/$pid/status
grep -q "^Uid:[[:space:]]*1337[[:space:]]*1337[[:space:]]*1337[[:space:]]*1337$" "$status" ||
    fail "not running as uid 1337: $(grep ^Uid "$status")"
grep -q "^Gid:[[:space:]]*1337[[:space:]]*1337[[:space:]]*1337[[:space:]]*1337$" "$status" ||
    fail "not running as gid 1337: $(grep ^Gid "$status")"
for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
    grep -q "^$cap:[[:space:]]*0000000000000000$" "$status" || fail "$(grep "^$cap" "$status")"
done
listening=$(ip netns exec "$netns" ss -Hltn)
for port in 15000 15021 15090; do
    grep -q ":$port " <<<"$listening" || fail "nothing listens on $port: $listening"
done
printf '   pid %s: uid/gid 1337, no capabilities; listening on 15000, 15021, 15090\n' "$pid"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" = 0 ] || { cat "$work/sidecar.log" >&2; fail "exit status $rc after SIGTERM"; }
if grep -qi 'read-only file system' "$work/sidecar.log"; then
    cat "$work/sidecar.log" >&2
    fail "the sidecar tried to write outside the writable paths"
fi
printf '   SIGTERM: exit 0; its log:\n'
sed 's/^/   | /' "$work/sidecar.log"
echo "check-image-layout: OK"
