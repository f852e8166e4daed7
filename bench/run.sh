#!/bin/sh
# make bench: childflow's speed and memory as ratios against the same work
# without childflow, medians of several runs, on loopback only.
set -eu
bin=$(realpath "${1:-bin/childflow}")
runs=${BENCH_RUNS:-5}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/loadgen" ./bench/loadgen
lg="$work/loadgen"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$lg" serve 127.0.0.1:$port & echo $! > "$work/serve.pid"
sleep 0.3
addr=127.0.0.1:$port

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
ratio() { python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }

# sample N CMD...: run CMD N times, print the median of its last output line.
sample() {
	n=$1; shift; vals=""
	for i in $(seq "$n"); do vals="$vals $("$@" | tail -1)"; done
	median $vals
}

echo "childflow bench: $runs runs each, medians; loopback only"
echo

# Startup: wall time of `childflow trace -- true` minus `true`.
ms() { python3 - "$@" <<'PY'
import subprocess, sys, time, statistics
cmd = sys.argv[1:]
v = []
for _ in range(20):
    t = time.perf_counter(); subprocess.run(cmd, check=True); v.append((time.perf_counter() - t) * 1000)
print(statistics.median(v))
PY
}
bare=$(ms true); traced=$(ms "$bin" trace --quiet -- true)
echo "startup: true $(printf %.1f "$bare") ms, childflow trace -- true $(printf %.1f "$traced") ms," \
	"adds $(python3 -c "print('%.1f' % ($traced - $bare))") ms (goal: at most 30 ms)"

bytes=${BENCH_BYTES:-4000000000}
tp_bare=$(sample "$runs" "$lg" send $addr $bytes)
tp_log=$(sample "$runs" "$bin" trace --quiet --flow-log "$work/f.jsonl" -- "$lg" send $addr $bytes)
tp_snap=$(sample "$runs" "$bin" trace --quiet --flow-log "$work/f.jsonl" -c "$work/c.pcapng" --snaplen 128 -- "$lg" send $addr $bytes)
tp_full=$(sample "$runs" "$bin" trace --quiet --flow-log "$work/f.jsonl" -c "$work/c.pcapng" -- "$lg" send $addr $bytes)
echo
echo "TCP bulk, $bytes bytes (MB/s): bare $tp_bare"
echo "  flow log only      $tp_log  ratio $(ratio $tp_log $tp_bare)  (goal >= 0.95)"
echo "  capture snaplen 128 $tp_snap  ratio $(ratio $tp_snap $tp_bare)  (goal >= 0.85)"
echo "  capture whole      $tp_full  ratio $(ratio $tp_full $tp_bare)  (goal >= 0.70)"

n=${BENCH_CONNS:-5000}
cr_bare=$(sample "$runs" "$lg" conns $addr $n)
cr_log=$(sample "$runs" "$bin" trace --quiet --flow-log "$work/f.jsonl" -- "$lg" conns $addr $n)
logged=$(grep -c '"event":"connect_attempt"' "$work/f.jsonl" || true)
echo
echo "$n short TCP connections (conn/s): bare $cr_bare, traced $cr_log," \
	"ratio $(ratio $cr_log $cr_bare) (goal >= 0.85); connect_attempt lines in the last log: $logged"

rules=""
for i in $(seq 50); do rules="$rules --deny-cidr 198.51.$i.0/24"; done
tp_pol=$(sample "$runs" "$bin" trace --quiet $rules -- "$lg" send $addr $bytes)
cr_pol=$(sample "$runs" "$bin" trace --quiet $rules -- "$lg" conns $addr $n)
echo
echo "50-rule policy: throughput ratio $(ratio $tp_pol $tp_bare), connection-rate ratio $(ratio $cr_pol $cr_bare)" \
	"(goal: within 5% of the ratios without a policy)"

echo
/usr/bin/time -f "%M" -o "$work/rss" "$bin" trace --quiet -c "$work/big.pcapng" -- "$lg" send $addr 1000000000 >/dev/null
echo "peak RSS of childflow capturing a 1 GB transfer: $(( $(cat "$work/rss") / 1024 )) MB (goal < 60 MB)," \
	"capture $(du -m "$work/big.pcapng" | cut -f1) MB"

# The DNS forwarder, the proxy relay and the rootless backend have their own
# benchmarks; each prints its figures with its goal.
echo
echo "== DNS forwarder"
sh bench/dns.sh
echo
echo "== proxy relay"
sh bench/proxy.sh "$bin"
echo
echo "== rootless backend"
sh bench/rootless.sh "$bin"
