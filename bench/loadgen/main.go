// Command loadgen is childflow's benchmark load: a TCP sink and accept
// server, a bulk sender and a short-connection client. It talks to loopback
// only and every loop is bounded.
//
//	loadgen serve ADDR               sink bulk data and answer short connections
//	loadgen send ADDR BYTES          send BYTES, print MB/s
//	loadgen conns ADDR N             open N sequential connections, print conn/s
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: loadgen serve ADDR | send ADDR BYTES | conns ADDR N")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2])
	case "send":
		err = send(os.Args[2], arg(3))
	case "conns":
		err = conns(os.Args[2], arg(3))
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func arg(i int) int64 {
	if len(os.Args) <= i {
		fmt.Fprintln(os.Stderr, "loadgen: missing argument")
		os.Exit(2)
	}
	n, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}

	return n
}

// serve reads the first byte of each connection: 'B' means bulk (sink
// everything), anything else is a short connection answered with one byte.
func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			b := make([]byte, 256<<10)
			n, err := c.Read(b[:1])
			if err != nil || n == 0 {
				return
			}
			if b[0] != 'B' {
				_, _ = c.Write([]byte{'k'})
				return
			}
			_, _ = io.CopyBuffer(io.Discard, c, b)
			_, _ = c.Write([]byte{'k'})
		}()
	}
}

func send(addr string, total int64) error {
	c, err := net.Dial("tcp", addr)
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
	_ = c.(*net.TCPConn).CloseWrite()
	if _, err := c.Read(buf[:1]); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("%.1f\n", float64(total)/secs/1e6)

	return nil
}

func conns(addr string, n int64) error {
	start := time.Now()
	b := []byte{'s'}
	for i := int64(0); i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := c.Read(b); err != nil {
			return err
		}
		c.Close()
	}
	fmt.Printf("%.0f\n", float64(n)/time.Since(start).Seconds())

	return nil
}
