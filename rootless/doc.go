// Package rootless is childflow's backend for hosts where BPF cannot be used:
// it runs the command in new user, network, mount and PID namespaces whose
// only route is a tap device, and serves that tap from the parent with
// gVisor's netstack. Every TCP connection and UDP association of the command
// ends in the netstack, where it is checked (Config.Check), logged (flows
// events), dialled from the host and spliced.
//
// How a run goes: Start re-executes /proc/self/exe as a small init (the
// program must call MaybeInit first thing in main). The init is PID 1 of the
// new PID namespace: it makes mounts private, bind-mounts a resolv.conf that
// names the gateway (when Config.DNS is set) and the hosts file, brings lo up,
// creates the tap (cf0, 10.0.2.100/24 and fd00:cf::100/64, default routes via
// 10.0.2.2 and fd00:cf::2, MTU 65520), passes the tap and a sock_diag socket
// to the parent over a socket pair, waits for the netstack, then starts the
// command, relays the parent's signals to it and reaps orphans. When the
// command exits the init reports its status and exits, and the kernel kills
// everything left in the PID namespace (daemons included). The init dies
// with the parent (PR_SET_PDEATHSIG), so a killed childflow leaves nothing.
//
// The gateway addresses stand for the host: with Config.HostLoopback,
// connections to them reach the host's 127.0.0.1 or ::1 on the same port;
// otherwise they are refused. Loopback inside the namespace stays inside.
//
// Throughput: the tap carries virtio-net headers so that neither side
// computes checksums (both ends are on this host), frames are up to 64 KiB,
// TCP buffers go up to 8 MiB with receive buffer moderation, SACK and cubic.
// One stream from the host's loopback into the namespace ran at about
// 1.5 GB/s here, against about 0.9 GB/s through slirp4netns with the same
// MTU (TestThroughput with CF_RL_BENCH=1 measures both).
//
// Limitations:
//   - Unprivileged users need user namespaces and a world-usable
//     /dev/net/tun. Only the caller's own uid and gid are mapped (to root);
//     subordinate id ranges (newuidmap) are not used, so commands that
//     switch users fail. Root maps every id to itself.
//   - The command sees the addresses above, not the host's; a process that
//     connects to the host's own public address reaches it through the
//     netstack like any other destination.
//   - ICMP: only echo requests are forwarded, through an unprivileged ping
//     socket (net.ipv4.ping_group_range) or, for root, a raw socket; other
//     ICMP from the command goes to the netstack, which answers nothing for
//     remote hosts. Echo requests produce no flow events, and their
//     violations carry no pid (ping and raw sockets are not looked up).
//   - Raw IP: raw sockets inside work (the command is root in its user
//     namespace), but only what the forwarders understand leaves: TCP, UDP
//     and ICMP echo, whatever socket sent them. Packets of any other IP
//     protocol are dropped at the tap and counted in Stats.Unsupported.
//   - Denied datagrams and echo requests are dropped without an error to
//     the sender (the eBPF backend fails the send with EPERM); they are
//     counted in Stats.DeniedPackets and reported as violations. A UDP
//     association is checked once, not every datagram.
//   - A datagram still queued at the tap when the command exits is counted
//     in Stats.Dropped; replies that find the namespace gone are not.
//   - A denied TCP connect is reset, so the program sees ECONNREFUSED (the
//     eBPF backend gives EPERM); every failed host dial is a reset too,
//     whatever its reason (the reason is in connect_result).
//   - DNS flows (port 53 when Config.DNS is set) produce no connect events:
//     the DNS callback reports them, with the process of the query's socket
//     when the lookup finds it.
//   - pid and comm of a flow are found through sock_diag and /proc/<pid>/fd
//     of the tree, best effort: a socket closed before the lookup (a UDP
//     socket closed right after its first datagram), or a tree beyond 256
//     processes, leaves them empty. Pids are the host's, not those the
//     command sees in its PID namespace. Captured frames carry no process.
//   - Captured frames are those at the tap. Their TCP and UDP checksums are
//     completed for the capture, although the tap itself carries them
//     partial.
//   - Signals from a terminal reach the command directly (it shares
//     childflow's process group); Session.Signal forwards others.
package rootless
