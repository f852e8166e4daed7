#!/bin/sh
# What the demo traces: a local HTTP server and a client making a few
# requests with curl and python3, all on 127.0.0.1:$1.
port=$1
cd "$(dirname "$0")"
python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
for i in 1 2 3 4 5 6 7 8 9 10; do
	curl -s -o /dev/null "http://127.0.0.1:$port/" && break
	sleep 0.2
done
for page in / /run.sh /README; do
	curl -s -o /dev/null -w 'GET %{url_effective} -> %{http_code}\n' "http://127.0.0.1:$port$page"
done
python3 -c 'import sys, urllib.request; print("python3 read", len(urllib.request.urlopen(sys.argv[1]).read()), "bytes")' \
	"http://127.0.0.1:$port/scenario.sh"
kill $server
