#!/bin/sh
# The built-in demo: a local HTTP server and a client making a few requests,
# traced together. Nothing leaves the machine.
set -eu
bin=${1:-bin/childflow}
out=demo/out
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== childflow trace: a local HTTP server and a client, on 127.0.0.1:$port"
"$bin" trace --summary --capture "$out/demo.pcapng" --flow-log "$out/demo.jsonl" -- sh -c "
	cd demo && python3 -m http.server $port --bind 127.0.0.1 >/dev/null 2>&1 &
	server=\$!
	for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.2; done
	for page in / /run.sh /README; do curl -s -o /dev/null -w 'GET %{url_effective} -> %{http_code}\n' http://127.0.0.1:$port\$page; done
	python3 -c 'import urllib.request; print(\"python3 read\", len(urllib.request.urlopen(\"http://127.0.0.1:$port/run.sh\").read()), \"bytes\")'
	kill \$server
"
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
