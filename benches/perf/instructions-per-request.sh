#!/bin/bash
# Instructions and cycles per proxied HTTP/1.1 request, from the CPU's counters (perf stat),
# which stay meaningful on a machine shared with other work where requests/s do not.
#
#   benches/perf/instructions-per-request.sh PROXY BOOTSTRAP [REQUESTS]
#
# PROXY is an Outrigger (or Envoy) binary, BOOTSTRAP one of the YAML files beside this
# script (a listener on 127.0.0.1:18000 routing to 127.0.0.1:18081). The upstream is
# `sidecar-bench upstream-http` (1 KiB responses), built next to the proxy or on PATH;
# the load is h2load over 50 keep-alive connections. Needs perf (linux-perf), h2load
# (nghttp2-client) and taskset; run as root or with perf_event_paranoid <= 0.
set -eu
proxy=$1
bootstrap=$2
requests=${3:-100000}
here=$(cd "$(dirname "$0")" && pwd)
bench=$(command -v sidecar-bench || echo "$here/../../target/release/sidecar-bench")
for tool in perf h2load taskset "$bench"; do
    command -v "$tool" > /dev/null || { echo "missing: $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$work"' EXIT

taskset -c 1 "$bench" upstream-http --port 18081 > "$work/upstream.log" 2>&1 &
case "$(basename "$proxy")" in
    envoy*) extra=(--use-dynamic-base-id --disable-hot-restart) ;;
    *) extra=() ;;
esac
taskset -c 0 "$proxy" -c "$bootstrap" --concurrency 1 -l error "${extra[@]}" > "$work/proxy.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:18000/ && break
    sleep 0.1
done
# Warm: connections pooled, caches and allocator settled.
taskset -c 1 h2load --h1 -n 20000 -c 50 -t 1 http://127.0.0.1:18000/ > /dev/null
perf stat -e instructions:u,instructions,cycles -x, -o "$work/stat" -p "$pid" &
stat=$!
sleep 0.2
taskset -c 1 h2load --h1 -n "$requests" -c 50 -t 1 http://127.0.0.1:18000/ > "$work/load"
kill -INT "$stat"
wait "$stat" || true
done=$(grep -o '[0-9]* succeeded' "$work/load" | cut -d' ' -f1)
count() { grep ",$1," "$work/stat" | cut -d, -f1; }
user=$(( $(count instructions:u) / done ))
all=$(( $(count instructions) / done ))
cycles=$(( $(count cycles) / done ))
echo "$(basename "$bootstrap"): $done requests; per request: $user user instructions, $all instructions, $cycles cycles"
