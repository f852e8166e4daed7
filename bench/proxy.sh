#!/bin/sh
# Proxy benchmark (sh bench/proxy.sh [bin/childflow], as root for the eBPF
# backend): throughput of a bulk transfer through a local HTTP CONNECT proxy
# when childflow forces it there (--proxy) against the same transfer with the
# client using the proxy itself, and 1000 connections open at once through
# childflow's proxy path. Loopback only; BENCH_RUNS rounds, medians.
set -eu
bin=$(realpath "${1:-bin/childflow}")
runs=${BENCH_RUNS:-5}
bytes=${BENCH_BYTES:-2000000000}
hold=${BENCH_HOLD:-1000}
backend=${BENCH_BACKEND:-ebpf}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/loadgen" ./bench/loadgen
go build -o "$work/proxybench" ./bench/proxybench
lg="$work/loadgen"
pb="$work/proxybench"

freeport() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
origin=127.0.0.1:$(freeport)
proxy=127.0.0.1:$(freeport)
"$lg" serve "$origin" & echo $! > "$work/serve.pid"
"$pb" proxy "$proxy" & echo $! > "$work/proxy.pid"
sleep 0.3

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
ratio() { python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
# once runs a transfer and prints its rate; a transfer that fails ends the
# bench with its command named, instead of a missing number further on.
once() {
	v=$("$@" | tail -1)
	case $v in '' | *[!0-9.]*) echo "proxy bench: no rate from: $*" >&2; exit 1 ;; esac
	echo "$v"
}

# The origin is on loopback, which childflow proxies only with --proxy-loopback.
cf() { "$bin" trace --quiet --backend "$backend" --proxy "http://$proxy" --proxy-loopback "$@"; }
if [ "$backend" = rootless ]; then
	origin_seen=10.0.2.2:${origin#127.0.0.1:} # the host's loopback through the gateway
	cf() { "$bin" trace --quiet --backend rootless --host-loopback --proxy "http://$proxy" "$@"; }
else
	origin_seen=$origin
fi

# The three transfers run in turn, round after round, so that a change in the
# machine's load shows in all three; a ratio is the median of the rounds'.
echo "childflow proxy bench ($backend backend): $runs rounds, medians; loopback only"
direct="" forced="" traced="" relayed="" fr="" tr="" rr=""
for i in $(seq "$runs"); do
	d=$(once "$pb" send -via "$proxy" "$origin" "$bytes")
	f=$(once cf --flow-log "$work/f.jsonl" -- "$pb" send "$origin_seen" "$bytes")
	t=$(once "$bin" trace --quiet --backend "$backend" --flow-log "$work/t.jsonl" -- \
		"$pb" send -via "$proxy" "$origin" "$bytes")
	direct="$direct $d" forced="$forced $f" traced="$traced $t"
	fr="$fr $(ratio "$f" "$d")" tr="$tr $(ratio "$t" "$d")"
	if [ "$backend" = ebpf ]; then
		r=$(once cf --proxy-relay --flow-log "$work/r.jsonl" -- "$pb" send "$origin_seen" "$bytes")
		relayed="$relayed $r" rr="$rr $(ratio "$r" "$d")"
	fi
done
echo "bulk $bytes bytes through an HTTP CONNECT proxy (MB/s): client uses the proxy" \
	"$(median $direct), childflow --proxy $(median $forced), ratio $(median $fr) (goal >= 0.8)"
echo "  (client uses the proxy itself under childflow without --proxy: $(median $traced)," \
	"ratio $(median $tr): the cost of tracing alone)"
if [ -n "$relayed" ]; then
	echo "  (childflow --proxy --proxy-relay, through the relay in childflow: $(median $relayed)," \
		"ratio $(median $rr))"
fi

ulimit -n 65536 2>/dev/null || true
out=$(cf --flow-log "$work/h.jsonl" -- "$pb" hold "$origin_seen" "$hold" 2>&1 | tail -1)
ok=$(grep -c '"event":"connect_result".*"status":"ok"' "$work/h.jsonl" || true)
echo "$hold connections open at once through childflow --proxy: $out;" \
	"connect_result ok in the flow log: $ok"
