#!/bin/sh
# The runtime filesystem layout of the Outrigger image, in one place: the Dockerfile's runtime
# stage runs it against `/`, and check-image-layout.sh against a temporary directory, so the
# image and its check cannot drift apart.
#
#   image-layout.sh ROOT [BINARY]
#   image-layout.sh --writable      prints the paths a pod makes writable (emptyDirs), one a line
#
# BINARY, when given, is installed as ROOT/usr/local/bin/outrigger (the Dockerfile copies it in
# itself). Ownership uses the numeric ids 1337:1337 (istio-proxy in the image; the injected
# pod's runAsUser/runAsGroup), so nothing here depends on the host's user database.
set -eu

# The paths the injection template mounts as emptyDirs (pkg/kube/inject/testdata/inject/
# hello.yaml.injected: istio-envoy, istio-data, workload-socket, credential-socket,
# workload-certs). Made here and owned by 1337 so the image also runs without those mounts,
# and the mount points exist on a read-only root filesystem.
WRITABLE="/etc/istio/proxy
/var/lib/istio/data
/var/run/secrets/workload-spiffe-uds
/var/run/secrets/credential-uds
/var/run/secrets/workload-spiffe-credentials"

if [ "${1:-}" = --writable ]; then
    echo "$WRITABLE"
    exit 0
fi

root=${1:?usage: image-layout.sh ROOT [BINARY]}
root=${root%/}
binary=${2:-}

bin="$root/usr/local/bin"
mkdir -p "$bin"
if [ -n "$binary" ]; then
    install -m 0755 "$binary" "$bin/outrigger"
fi
[ -x "$bin/outrigger" ] || { echo "image-layout.sh: $bin/outrigger is missing" >&2; exit 1; }

# The names Istio calls (istio/proxyv2, pilot/docker/Dockerfile.proxyv2): the entrypoint
# pilot-agent (`proxy sidecar ...`, `istio-iptables ...`, `wait`, `request ...`) and envoy
# (Envoy's own flags). One binary dispatches on its first argument, not on its name.
for name in pilot-agent envoy; do
    ln -sfn outrigger "$bin/$name"
done

for dir in $WRITABLE; do
    install -d -m 0755 -o 1337 -g 1337 "$root$dir"
done
