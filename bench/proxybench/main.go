// Command proxybench is the load of childflow's proxy benchmark: a plain
// HTTP CONNECT proxy, a bulk sender that can use that proxy itself (the
// baseline) or be sent through it by childflow, and a client that holds many
// connections open at once. It talks to loopback only (loadgen serve is the
// origin) and every loop is bounded.
//
//	proxybench proxy ADDR                    serve HTTP CONNECT on ADDR
//	proxybench send [-via PROXY] ADDR BYTES  send BYTES to a loadgen sink, print MB/s
//	proxybench hold [-via PROXY] ADDR N      open N connections at once, print how many
//	                                         completed an exchange and the seconds taken
//
// The proxy copies with io.Copy between TCP connections, so the kernel
// splices the payload; childflow's relay does the same, which makes the two
// paths comparable.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		usage()
	}

	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	via := fs.String("via", "", "connect through the HTTP CONNECT proxy at `ADDR`")
	_ = fs.Parse(os.Args[2:])
	args := fs.Args()

	var err error
	switch {
	case os.Args[1] == "proxy" && len(args) == 1:
		err = serveProxy(args[0])
	case os.Args[1] == "send" && len(args) == 2:
		err = send(*via, args[0], number(args[1]))
	case os.Args[1] == "hold" && len(args) == 2:
		err = hold(*via, args[0], number(args[1]))
	default:
		usage()
	}

	if err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: proxybench proxy ADDR | send [-via PROXY] ADDR BYTES | "+
		"hold [-via PROXY] ADDR N")
	os.Exit(2)
}

func number(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "proxybench: want a positive number, got %q\n", s)
		os.Exit(2)
	}

	return n
}

// serveProxy answers CONNECT requests with a tunnel to the named target.
func serveProxy(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}

	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go tunnel(c.(*net.TCPConn))
	}
}

func tunnel(c *net.TCPConn) {
	defer c.Close()

	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect || br.Buffered() > 0 {
		return
	}

	up, err := net.DialTimeout("tcp", req.RequestURI, 10*time.Second)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()

	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(c, up)
		_ = c.CloseWrite()
	}()
	_, _ = io.Copy(up, c)
	_ = up.(*net.TCPConn).CloseWrite()
	<-done
}

// dial connects to addr, through the proxy at via when it is set.
func dial(via, addr string) (net.Conn, error) {
	if via == "" {
		return net.DialTimeout("tcp", addr, 10*time.Second)
	}

	c, err := net.DialTimeout("tcp", via, 10*time.Second)
	if err != nil {
		return nil, err
	}

	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", addr); err != nil {
		c.Close()
		return nil, err
	}

	// The answer is read a byte at a time so that no tunnel byte is lost.
	resp, err := http.ReadResponse(bufio.NewReaderSize(oneByte{c}, 16), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("connect through %s: %v %v", via, resp, err)
	}

	return c, nil
}

// oneByte reads one byte per call.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

// send streams total bytes to a loadgen sink and prints the rate in MB/s.
func send(via, addr string, total int64) error {
	c, err := dial(via, addr)
	if err != nil {
		return err
	}
	defer c.Close()

	buf := make([]byte, 256<<10)
	buf[0] = 'B'
	start := time.Now()
	for sent := int64(0); sent < total; {
		n, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
		if err != nil {
			return err
		}
		sent += int64(n)
	}

	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}

	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return err
	}

	fmt.Printf("%.1f\n", float64(total)/time.Since(start).Seconds()/1e6)

	return nil
}

// hold opens n connections at once, keeps every one open until all have
// exchanged a byte with a loadgen server (or failed), and prints the count
// of those that did and the seconds taken.
func hold(via, addr string, n int64) error {
	var ok atomic.Int64
	var wg, all sync.WaitGroup
	all.Add(int(n))
	start := time.Now()
	errs := make(chan error, 1)

	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := exchange(via, addr, &all); err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			ok.Add(1)
		}()
	}

	wg.Wait()
	fmt.Printf("%d of %d in %.2f s\n", ok.Load(), n, time.Since(start).Seconds())
	if ok.Load() != n {
		return errors.Join(fmt.Errorf("%d connections failed", n-ok.Load()), <-errs)
	}

	return nil
}

// exchange opens one connection, waits until every connection of hold is
// open, then sends a byte and reads the answer. all is released whatever
// happens, so that no connection waits for a failed one (bounded by 60 s).
func exchange(via, addr string, all *sync.WaitGroup) error {
	c, err := dial(via, addr)
	all.Done()
	if err != nil {
		return err
	}
	defer c.Close()

	waitTimeout(all, 60*time.Second)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte{'s'}); err != nil {
		return err
	}

	var b [1]byte
	_, err = io.ReadFull(c, b[:])

	return err
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	select {
	case <-done:
	case <-time.After(d):
	}
}
