#!/bin/sh
# The built-in demo: a local HTTP server and a client making a few requests,
# traced together. Nothing leaves the machine.
set -eu
bin=${1:-bin/childflow}
out=demo/out
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== childflow trace: a local HTTP server and a client, on 127.0.0.1:$port"
"$bin" trace --summary --capture "$out/demo.pcapng" --flow-log "$out/demo.jsonl" -- \
	sh demo/scenario.sh "$port"
echo
echo "== outputs"
echo "flow log: $out/demo.jsonl ($(wc -l < "$out/demo.jsonl") events)"
echo "capture:  $out/demo.pcapng"
if command -v tshark >/dev/null; then
	echo
	echo "== tshark reads the capture (HTTP requests, with the process behind each packet)"
	tshark -r "$out/demo.pcapng" -Y http.request -T fields -e ip.src -e tcp.dstport \
		-e http.request.uri -e frame.comment 2>/dev/null | head -10
fi
echo
echo "== childflow report $out/demo.jsonl"
"$bin" report "$out/demo.jsonl" | head -30
