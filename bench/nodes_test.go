package bench

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

// TestBroadcastNodes runs the fan-out measurement across a real cluster:
// redis-server and two wsd nodes with --broker redis (StartNodes), the
// subscribers spread over both, publications through the first node. Every
// subscriber must get every publication once, in order; half of the
// deliveries crossed nodes; the broker's CPU is counted.
func TestBroadcastNodes(t *testing.T) {
	redis, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (apt-get install redis-server): the cross-node run is not tested")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := StartNodes(ctx, NodesOptions{
		Wsd: wsdproc.Binary(t), Redis: redis, N: 2, Host: "127.0.0.1",
		Port: port, AdminBase: admin, APIKey: "k", LogDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := nodes.Stop(); err != nil {
			t.Errorf("stopping the nodes: %v", err)
		}
	}()
	var progress bytes.Buffer
	r, err := RunBroadcast(ctx, BroadcastOptions{
		Target: TargetWsd, URLs: nodes.URLs, API: nodes.APIs[0], APIKey: "k",
		ServerPIDs: nodes.PIDs, BrokerPIDs: []int{nodes.RedisPID},
		Subs: 200, Channel: "bench", Size: 100, Rate: 100, Count: 20,
		Settle: 100 * time.Millisecond, Drain: 10 * time.Second, Timeout: 50 * time.Second,
		PerProcess: 100, Loops: 1, Concurrency: 8, Source: net.ParseIP("127.0.0.2"),
		Progress: &progress, inProcess: true,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	var table bytes.Buffer
	r.Print(&table)
	t.Logf("\n%s", table.String())
	if !r.Complete || r.Nodes != 2 || r.Processes != 2 || r.Received != 200*20 {
		t.Fatalf("complete %v: %d nodes, %d client processes, %d of %d received", r.Complete, r.Nodes, r.Processes, r.Received, 200*20)
	}
	if r.CrossNode != 100*20 {
		t.Fatalf("%d cross-node deliveries, want %d (the second node's 100 subscribers × 20)", r.CrossNode, 100*20)
	}
	if len(r.ServerPIDs) != 2 || len(r.BrokerPIDs) != 1 || r.ServerCPUSeconds <= 0 || r.BrokerCPUSeconds <= 0 || r.BrokerCPUSeconds >= r.ServerCPUSeconds {
		t.Fatalf("server pids %v, broker pids %v: server CPU %v s, of which the broker %v s", r.ServerPIDs, r.BrokerPIDs, r.ServerCPUSeconds, r.BrokerCPUSeconds)
	}
}
