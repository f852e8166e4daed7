#!/bin/sh
# DNS forwarder figures, on loopback only: the latency one query gains by
# going through the forwarder (median and 99th percentile over 5000 queries,
# against asking the same test server directly), and how many of 5000
# queries sent within one second (from 8 sockets) are answered.
# Usage: sh bench/dns.sh   (BENCH_COUNT=N repeats each benchmark N times)
set -eu
count=${BENCH_COUNT:-3}
go test ./dns/ -run '^$' -bench '^Benchmark(Direct|Forwarder)$' -benchtime 5000x -count "$count" |
	grep -E '^(Benchmark|ok|FAIL)'
go test ./dns/ -run '^$' -bench '^BenchmarkForwarderRate$' -benchtime 1x -count "$count" |
	grep -E '^(Benchmark|ok|FAIL)'
