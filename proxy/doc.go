// Package proxy sends the traced command's TCP connections through an
// upstream HTTP, HTTPS or SOCKS5 proxy.
//
// It has three parts:
//
//   - URL and ParseURL read the --proxy value; ResolvePassword and
//     URL.WithCredentials add the -U/-P credentials. The password is never
//     part of a printed URL, an error, an event or a log line.
//   - Dialer opens one tunnel through the proxy to a Target: HTTP CONNECT,
//     the same over TLS (https), or a SOCKS5 CONNECT. The rootless backend
//     uses it directly from its netstack forwarder.
//   - Dialer.Tunnel speaks the same handshakes over a connection someone else
//     opened to an http or socks5 proxy, reading exactly the proxy's answer.
//     The eBPF backend uses it on the program's own socket (see the joiner
//     in package trace), which then is the tunnel, with nothing in between.
//   - Relay is the loopback listener that the eBPF backend redirects the TCP
//     connects to that it does not join (https proxies, --proxy-relay). It
//     asks its Lookup function for the original destination of each accepted
//     connection, dials it through the Dialer, emits a flows.ConnectResult
//     and copies bytes both ways.
//
// What the proxy is asked for: "name:port" when the Target carries the DNS
// name the program resolved, otherwise the IP literal (IPv6 in brackets for
// HTTP). SOCKS5 follows the curl convention: socks5:// always sends the IP
// address the program connected to, socks5h:// sends the name when known so
// that the proxy resolves it and can apply its own domain rules.
//
// Watch out for:
//
//   - File descriptors. Each relayed connection holds two descriptors in the
//     childflow process (the accepted client side and the upstream side).
//     RelayConfig.MaxConns (default 4096) bounds them; connections past the
//     limit are reset, counted in Stats.Rejected and reported as failed
//     connect_result events. The Go runtime raises the soft RLIMIT_NOFILE to
//     the hard limit at start-up; the hard limit must exceed twice MaxConns
//     plus what the rest of childflow uses.
//   - Throughput. Between two plain TCP sockets (http and socks5 proxies) the
//     copy uses splice(2), so payload does not pass through user space. An
//     https proxy needs the bytes in user space to encrypt them.
//   - Byte counters in Stats are added when a direction of a connection ends,
//     not while it is running.
//   - An https proxy with URL.Insecure set is still reached over TLS, but its
//     certificate is not checked at all, so anyone on the path to the proxy
//     can impersonate it and read the credentials and the traffic.
package proxy
