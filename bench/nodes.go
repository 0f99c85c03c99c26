package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// NodesOptions describe a cluster on this host for the cross-node
// benchmarks: a redis-server of its own and N wsd nodes that use it as
// their broker, each node on its own WebSocket and admin ports.
type NodesOptions struct {
	Wsd       string   // the wsd binary
	Redis     string   // the redis-server binary
	N         int      // nodes
	Host      string   // every listener's host (a loopback address)
	Port      int      // node i's WebSocket port is Port+i
	AdminBase int      // node i's admin port is AdminBase+i
	APIKey    string   // the nodes' --api-key
	Args      []string // more wsd flags, after the ones above
	LogDir    string   // redis.log and wsd-i.log
}

// Nodes is a running cluster.
type Nodes struct {
	URLs      []string // ws://host:port/ws of each node
	APIs      []string // each node's publish URL
	PIDs      []int    // the nodes'
	RedisPID  int
	RedisAddr string

	servers *Servers
	redis   *exec.Cmd
	exited  chan struct{} // closed when redis-server has exited
}

// StartNodes starts redis-server, then the nodes, and waits until every one
// is ready. On an error, what was started is stopped.
func StartNodes(ctx context.Context, o NodesOptions) (*Nodes, error) {
	if o.N < 1 {
		return nil, errors.New("nodes: need at least one node")
	}
	if err := os.MkdirAll(o.LogDir, 0o755); err != nil {
		return nil, err
	}
	n := &Nodes{}
	if err := n.startRedis(ctx, o); err != nil {
		return nil, err
	}
	s, err := StartServers(ctx, ServersOptions{
		Wsd: o.Wsd, K: o.N, Listen: net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), PortPerProcess: true,
		AdminHost: o.Host, AdminBase: o.AdminBase, NodePrefix: "node", LogDir: o.LogDir,
		Args: append([]string{"--broker", "redis", "--redis-addr", n.RedisAddr, "--api-key", o.APIKey}, o.Args...),
	})
	if err != nil {
		n.stopRedis()
		return nil, err
	}
	n.servers, n.PIDs = s, s.PIDs
	for i, a := range s.Admins {
		n.URLs = append(n.URLs, fmt.Sprintf("ws://%s/ws", net.JoinHostPort(o.Host, strconv.Itoa(o.Port+i))))
		n.APIs = append(n.APIs, a+"/api/publish")
	}
	return n, nil
}

// startRedis starts redis-server on a free port of o.Host, without
// persistence, and waits until it answers PING.
func (n *Nodes) startRedis(ctx context.Context, o NodesOptions) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(o.Host, "0"))
	if err != nil {
		return fmt.Errorf("nodes: a free port for redis-server: %w", err)
	}
	n.RedisAddr = ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(n.RedisAddr)
	logf, err := os.Create(filepath.Join(o.LogDir, "redis.log"))
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(o.Redis, "--port", port, "--bind", o.Host, "--save", "", "--appendonly", "no",
		"--dir", o.LogDir, "--logfile", "")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // it dies with the bench
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("nodes: start redis-server (%s): %w", o.Redis, err)
	}
	n.redis, n.RedisPID, n.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() { _ = cmd.Wait(); close(n.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pingRedis(n.RedisAddr) == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("nodes: redis-server exited at start; see %s", logf.Name())
		case <-ctx.Done():
			n.stopRedis()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.stopRedis()
			return fmt.Errorf("nodes: redis-server does not answer on %s; see %s", n.RedisAddr, logf.Name())
		}
	}
}

func pingRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redis answered %q", line)
	}
	return nil
}

func (n *Nodes) stopRedis() {
	if n.redis == nil {
		return
	}
	_ = n.redis.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(5 * time.Second):
		_ = n.redis.Process.Kill()
		<-n.exited
	}
}

// Stop drains the nodes, then stops redis-server.
func (n *Nodes) Stop() error {
	var err error
	if n.servers != nil {
		err = n.servers.Stop()
	}
	n.stopRedis()
	return err
}
