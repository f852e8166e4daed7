#!/bin/sh
# DNS forwarder figures, on loopback only: the latency one query gains by
# going through the forwarder (median and 99th percentile, against asking the
# same test server directly), and how many of 5000 queries sent within one
# second (from 8 sockets) are answered.
# Usage: sh bench/dns.sh   (BENCH_COUNT=N repeats each benchmark N times)
set -eu
count=${BENCH_COUNT:-3}
go test ./dns/ -run '^$' -bench '^Benchmark(Direct|Forwarder|ForwarderRate)$' \
	-benchtime 5000x -count "$count" | awk '
/^Benchmark(Direct|Forwarder)-/ { print; next }
/^BenchmarkForwarderRate/ { print; next }
/^(ok|FAIL)/ { print }'
