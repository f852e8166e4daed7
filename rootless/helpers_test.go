package rootless_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/childflow/childflow/rootless"
)

// helperEnv selects a helper mode of the test binary: the tests run the
// binary itself as the command inside the namespace (and as a childflow
// parent), so that they need no other tools.
const helperEnv = "CF_RL_HELPER"

func TestMain(m *testing.M) {
	rootless.MaybeInit()

	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper(os.Args[1:]))
	}

	os.Exit(m.Run())
}

func runHelper(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no mode")
		return 100
	}

	modes := map[string]func([]string) int{
		"get": helperGet, "dial": helperDial, "udp": helperUDP, "resolve": helperResolve,
		"cat": helperCat, "sink": helperSink, "many": helperMany, "ping": helperPing,
		"parent": helperParent, "dnstcp": helperDNSTCP, "blast": helperBlast,
		"rawproto": helperRawProto,
	}
	f, ok := modes[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "helper: unknown mode %q\n", args[0])
		return 100
	}

	return f(args[1:])
}

func helperGet(args []string) int {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(args[0])
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, b)
	return 0
}

// helperDial connects and says "ok", "refused" (exit 2) or the error.
func helperDial(args []string) int {
	start := time.Now()
	c, err := net.DialTimeout("tcp", args[0], 10*time.Second)
	took := time.Since(start)
	switch {
	case err == nil:
		c.Close()
		fmt.Printf("ok %d\n", took.Milliseconds())
		return 0
	case errors.Is(err, syscall.ECONNREFUSED):
		fmt.Printf("refused %d\n", took.Milliseconds())
		return 2
	}

	fmt.Println("error:", err)
	return 1
}

func helperUDP(args []string) int {
	c, err := net.Dial("udp", args[0])
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer c.Close()

	buf := make([]byte, 2048)
	for range 3 {
		c.Write([]byte(args[1]))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			fmt.Printf("%s", buf[:n])
			return 0
		}
	}

	fmt.Println("error: no reply")
	return 1
}

func helperResolve(args []string) int {
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	addrs, err := r.LookupHost(ctx, args[0])
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	fmt.Print(addrs)
	return 0
}

func helperCat(args []string) int {
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	os.Stdout.Write(b)
	return 0
}

// helperSink reads a stream to its end and prints bytes and MB/s.
func helperSink(args []string) int {
	var c net.Conn
	var err error
	for range 100 {
		if c, err = net.Dial("tcp", args[0]); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer c.Close()

	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 256<<10))
	secs := time.Since(start).Seconds()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	fmt.Printf("%d %.1f\n", n, float64(n)/secs/1e6)
	return 0
}

// helperMany makes N sequential connections, each reading to EOF.
func helperMany(args []string) int {
	n, _ := strconv.Atoi(args[1])
	start := time.Now()
	for i := range n {
		c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
		if err != nil {
			fmt.Printf("error at %d: %v\n", i, err)
			return 1
		}
		io.Copy(io.Discard, c)
		c.Close()
	}

	fmt.Printf("%d %.0f\n", n, float64(n)/time.Since(start).Seconds())
	return 0
}

// helperPing sends one ICMP echo request with a ping socket and waits for
// the reply.
func helperPing(args []string) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer unix.Close(fd)

	ip := net.ParseIP(args[0]).To4()
	msg := []byte{8, 0, 0, 0, 0, 1, 0, 7, 'c', 'f'}
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: [4]byte(ip)}); err != nil {
		fmt.Println("error:", err)
		return 1
	}

	tv := unix.NsecToTimeval(int64(2 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 1500)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	fmt.Printf("reply type %d seq %d payload %s\n", buf[0], binary.BigEndian.Uint16(buf[6:]), buf[8:n])
	return 0
}

// helperParent is a childflow parent: it runs the rest of its arguments in
// the rootless namespace with the host loopback reachable and reports the
// exit code.
func helperParent(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	res, err := rootless.Run(ctx, rootless.Config{
		Command: args, Env: append(os.Environ(), helperEnv+"=1"), Stdout: os.Stdout,
		Stderr: os.Stderr, HostLoopback: true,
	})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	return res.ExitCode
}

// helperDNSTCP asks server for the A records of a name over TCP and prints
// them.
func helperDNSTCP(args []string) int {
	c := mdns.Client{Net: "tcp", Timeout: 5 * time.Second}
	q := new(mdns.Msg)
	q.SetQuestion(mdns.Fqdn(args[1]), mdns.TypeA)

	resp, _, err := c.Exchange(q, args[0])
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}

	for _, rr := range resp.Answer {
		if a, ok := rr.(*mdns.A); ok {
			fmt.Print(a.A)
		}
	}
	return 0
}
