package main

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
)

// clusterConfig is what chooses and configures the broker: the memory
// broker for one node, Redis for several.
type clusterConfig struct {
	broker         string
	redisAddr      string
	redisUser      string
	redisPassword  string
	redisTLS       bool
	redisTLSCA     string
	tlsRoots       *x509.CertPool // from redisTLSCA
	redisSentinel  string
	redisPrefix    string
	redisTimeout   time.Duration
	presenceTTL    time.Duration
	nodeTTL        time.Duration
	advertiseAddr  string
	redisAddresses []string // redisAddr split
}

func clusterFlags(fs *flag.FlagSet, c *clusterConfig) {
	fs.StringVar(&c.broker, "broker", "memory", "what carries publications, history and presence: memory (this node only) or redis (a cluster of nodes sharing one Redis)")
	fs.StringVar(&c.redisAddr, "redis-addr", "127.0.0.1:6379", "with --broker redis: comma-separated Redis addresses (host:port): one server, Redis Cluster seeds, or the sentinels with --redis-sentinel-master")
	fs.StringVar(&c.redisUser, "redis-user", "", "with --broker redis: ACL user name (empty: the default user)")
	fs.StringVar(&c.redisPassword, "redis-password", "", "with --broker redis: password (prefer WSD_REDIS_PASSWORD or the config file to the command line)")
	fs.BoolVar(&c.redisTLS, "redis-tls", false, "with --broker redis: connect with TLS (the system's roots verify the server, or --redis-tls-ca's)")
	fs.StringVar(&c.redisTLSCA, "redis-tls-ca", "", "with --redis-tls: PEM file of the CA certificates that verify Redis's (instead of the system's roots)")
	fs.StringVar(&c.redisSentinel, "redis-sentinel-master", "", "with --broker redis: the master set name; --redis-addr then lists the sentinels")
	fs.StringVar(&c.redisPrefix, "redis-prefix", broker.DefaultRedisPrefix, "with --broker redis: prefix of every key and pub/sub channel, so that clusters can share a Redis (no '{' or '}')")
	durationVar(fs, &c.redisTimeout, "redis-timeout", broker.DefaultRedisTimeout, "with --broker redis: time allowed for each Redis command; a publish not confirmed in it fails (BROKER_ERROR)")
	durationVar(fs, &c.presenceTTL, "redis-presence-ttl", broker.DefaultPresenceTTL, "with --broker redis: a presence entry lives this long unless its node refreshes it (every third of it): how long a dead node's clients stay listed")
	durationVar(fs, &c.nodeTTL, "redis-node-ttl", broker.DefaultNodeTTL, "with --broker redis: a node stays in the registry (/api/info) this long after its last announcement (every third of it)")
	fs.StringVar(&c.advertiseAddr, "advertise-addr", "", "the address other nodes and /api/info give for this node's WebSocket listener (empty: --listen)")
}

// check validates the cluster settings (parseConfig calls it).
func (c *clusterConfig) check() error {
	switch c.broker {
	case "memory", "redis":
	default:
		return fmt.Errorf("invalid --broker %q: want memory or redis", c.broker)
	}
	c.redisAddresses = nil
	for _, a := range strings.Split(c.redisAddr, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("invalid --redis-addr %q: %v", a, err)
		}
		c.redisAddresses = append(c.redisAddresses, a)
	}
	if len(c.redisAddresses) == 0 {
		return errors.New("invalid --redis-addr: no address (default 127.0.0.1:6379)")
	}
	if c.redisPrefix == "" || strings.ContainsAny(c.redisPrefix, "{} ") {
		return fmt.Errorf("invalid --redis-prefix %q: not empty, and no '{', '}' or space (default %s)", c.redisPrefix, broker.DefaultRedisPrefix)
	}
	for _, d := range []struct {
		name     string
		v, least time.Duration
		def      time.Duration
	}{
		{"redis-timeout", c.redisTimeout, 1, broker.DefaultRedisTimeout},
		// Refreshed every third: shorter would keep Redis busy for little.
		{"redis-presence-ttl", c.presenceTTL, 300 * time.Millisecond, broker.DefaultPresenceTTL},
		{"redis-node-ttl", c.nodeTTL, 300 * time.Millisecond, broker.DefaultNodeTTL},
	} {
		if d.v <= 0 {
			return fmt.Errorf("invalid --%s %v: must be greater than 0 (default %v)", d.name, d.v, d.def)
		}
		if d.v < d.least {
			return fmt.Errorf("invalid --%s %v: at least %v (default %v)", d.name, d.v, d.least, d.def)
		}
	}
	if c.redisTLSCA != "" {
		if !c.redisTLS {
			return errors.New("--redis-tls-ca needs --redis-tls")
		}
		b, err := os.ReadFile(c.redisTLSCA)
		if err != nil {
			return fmt.Errorf("--redis-tls-ca: %v", err)
		}
		c.tlsRoots = x509.NewCertPool()
		if !c.tlsRoots.AppendCertsFromPEM(b) {
			return fmt.Errorf("--redis-tls-ca %s: no PEM certificate in it", c.redisTLSCA)
		}
	}
	if c.advertiseAddr != "" {
		if err := checkAddr(c.advertiseAddr); err != nil {
			return fmt.Errorf("invalid --advertise-addr %q: %v", c.advertiseAddr, err)
		}
	}
	return nil
}

// newNodeID returns a random node id (32 bits, hex) for --node-id "": the
// Redis broker needs one before the hub exists.
func newNodeID() string {
	var b [4]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b[:])
}

// brokers is the broker wsd runs: exactly one of mem and redis is set.
type brokers struct {
	mem   *broker.Memory
	redis *broker.Redis
}

func (b brokers) broker() broker.Broker {
	if b.redis != nil {
		return b.redis
	}
	return b.mem
}

func (b brokers) name() string {
	if b.redis != nil {
		return "redis"
	}
	return "memory"
}

// ready says whether the broker can carry cross-node traffic (always, for
// the memory broker).
func (b brokers) ready() error {
	if b.redis != nil {
		return b.redis.Ready()
	}
	return nil
}

// newBrokers makes the configured broker. The Redis broker connects here:
// an unreachable Redis is an error at start.
func (c *config) newBrokers(log *slog.Logger, srv *engine.Server) (brokers, error) {
	if c.cluster.broker == "memory" {
		return brokers{mem: broker.NewMemory(broker.MemoryOptions{MaxChannels: c.maxChannels, MaxHistoryBytes: c.maxHistoryBytes, Logger: log})}, nil
	}
	var tlsConf *tls.Config
	if c.cluster.redisTLS {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.cluster.tlsRoots}
	}
	adv := c.cluster.advertiseAddr
	if adv == "" {
		adv = c.engine.Addr
	}
	r, err := broker.NewRedis(broker.RedisOptions{
		Addrs:          c.cluster.redisAddresses,
		SentinelMaster: c.cluster.redisSentinel,
		Username:       c.cluster.redisUser,
		Password:       c.cluster.redisPassword,
		TLS:            tlsConf,
		Prefix:         c.cluster.redisPrefix,
		NodeID:         c.nodeID,
		NodeAddress:    adv,
		Connections:    srv.OpenConnections,
		Timeout:        c.cluster.redisTimeout,
		PresenceTTL:    c.cluster.presenceTTL,
		NodeTTL:        c.cluster.nodeTTL,
		Logger:         log,
	})
	if err != nil {
		return brokers{}, err
	}
	return brokers{redis: r}, nil
}
