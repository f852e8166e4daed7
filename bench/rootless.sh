#!/bin/sh
# bench/rootless.sh: the rootless backend's data path against slirp4netns
# (and pasta when installed) on the same transfer: one TCP stream from a
# namespace to a sink on the host's loopback, and N sequential short
# connections. Medians of several runs; loopback only. Runs as any user
# that may create user namespaces and open /dev/net/tun.
#
#   sh bench/rootless.sh [path/to/childflow]
#   BENCH_RUNS=3 BENCH_BYTES=2000000000 BENCH_CONNS=1000
set -eu
bin=$(realpath "${1:-bin/childflow}")
runs=${BENCH_RUNS:-3}
bytes=${BENCH_BYTES:-2000000000}
conns=${BENCH_CONNS:-1000}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

go build -o "$work/loadgen" ./bench/loadgen
lg="$work/loadgen"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$lg" serve 127.0.0.1:"$port" & echo $! > "$work/serve.pid"
sleep 0.3

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# sample CMD...: run CMD $runs times, print the median of its last line.
sample() {
	vals=""
	for _ in $(seq "$runs"); do vals="$vals $("$@" | tail -1)"; done
	median $vals
}

# The host's loopback as each namespace reaches it: the gateway 10.0.2.2
# (childflow with --host-loopback, slirp4netns by default).
bare() { "$lg" "$1" 127.0.0.1:"$port" "$2"; }
rootless() { "$bin" trace --backend rootless --host-loopback --quiet -- "$lg" "$1" 10.0.2.2:"$port" "$2"; }

# slirp4netns: an unshared user+net namespace waits until slirp4netns has
# configured its tap (same 65520 MTU as childflow's), then runs loadgen.
slirp() {
	rm -f "$work/ns.pid" "$work/go" "$work/ready"
	unshare --user --map-root-user --net sh -c \
		'echo $$ > "$0/ns.pid"; while [ ! -e "$0/go" ]; do sleep 0.01; done; exec "$@"' \
		"$work" "$lg" "$1" 10.0.2.2:"$port" "$2" &
	job=$!
	while [ ! -s "$work/ns.pid" ]; do sleep 0.01; done
	slirp4netns --configure --mtu=65520 --ready-fd=3 "$(cat "$work/ns.pid")" tap0 \
		3>"$work/ready" >/dev/null 2>&1 &
	echo $! > "$work/slirp.pid"
	while [ ! -s "$work/ready" ]; do sleep 0.01; done
	touch "$work/go"
	wait "$job"
	kill "$(cat "$work/slirp.pid")" 2>/dev/null || true
	rm -f "$work/slirp.pid"
}

# pasta maps its namespace's default gateway to the host's loopback.
pasta_run() {
	pasta --config-net --quiet -- sh -c \
		'gw=$(ip -4 route show default | cut -d" " -f3); exec "$0" "$1" "$gw:$2" "$3"' \
		"$lg" "$1" "$port" "$2"
}

echo "rootless data path: $runs runs each, medians; one TCP stream of $bytes bytes (MB/s)" \
	"and $conns sequential connections (conn/s), to the host's loopback"
printf '%-28s %12s %12s\n' "" "MB/s" "conn/s"
printf '%-28s %12s %12s\n' "bare (no namespace)" "$(sample bare send "$bytes")" "$(sample bare conns "$conns")"
printf '%-28s %12s %12s\n' "childflow --backend rootless" "$(sample rootless send "$bytes")" \
	"$(sample rootless conns "$conns")"
if command -v slirp4netns >/dev/null; then
	printf '%-28s %12s %12s\n' "slirp4netns (mtu 65520)" "$(sample slirp send "$bytes")" \
		"$(sample slirp conns "$conns")"
else
	echo "slirp4netns: not installed"
fi
if command -v pasta >/dev/null; then
	printf '%-28s %12s %12s\n' "pasta" "$(sample pasta_run send "$bytes")" \
		"$(sample pasta_run conns "$conns")"
else
	echo "pasta: not installed"
fi
