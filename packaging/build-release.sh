#!/bin/sh
# The release build of the binaries that ship: the Dockerfile's build stage runs this, and so
# does .ci/run, so the image is built the way CI checks it.
#
#   packaging/build-release.sh [OUTDIR]
#
# With OUTDIR, the binaries are also copied there (the build stage copies them out of its
# cached target directory this way). CARGO_TARGET_DIR is honoured.
set -eu
cd "$(dirname "$0")/.."

cargo build --release --locked -p outrigger -p iptables-init

if [ -n "${1:-}" ]; then
    target=${CARGO_TARGET_DIR:-target}
    mkdir -p "$1"
    install -m 0755 "$target/release/outrigger" "$target/release/outrigger-iptables" "$1/"
fi
