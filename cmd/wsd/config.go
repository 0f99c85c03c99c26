package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/peterbourgon/ff/v3"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/protocol"
)

// envPrefix prefixes the environment variable of every flag: --ping-interval
// is WSD_PING_INTERVAL.
const envPrefix = "WSD"

// config is everything wsd can be told, from flags, WSD_* environment
// variables and an optional TOML file, in that order of precedence.
type config struct {
	engine       engine.Config
	admin        string
	echoPath     string
	subprotocols string
	drainTimeout time.Duration
	logLevel     string
	logFormat    string
	configFile   string

	// Channels, the API and authentication.
	apiKey             string
	nodeID             string
	allowAnonymous     bool
	allowClientPublish bool
	jwtSecretFile      string
	jwtPublicKeys      string
	jwtAudience        string
	jwtIssuer          string
	tokenCookie        string
	tokenCache         int
	defaults           hub.ChannelOptions // channels outside any --namespace
	namespaces         namespaces
	maxSubscriptions   int
	maxChannels        int
	maxHistoryBytes    int64
	cluster            clusterConfig

	// Operations.
	trustedProxies prefixList
	allowedOrigins string
	pprof          bool
	adminUI        bool
	printConfig    bool

	flags *flag.FlagSet // what set the fields above; for settings
}

func newFlagSet(c *config) *flag.FlagSet {
	d := engine.Defaults()
	fs := flag.NewFlagSet("wsd", flag.ContinueOnError)
	// Errors are reported in one line by run; usage only on --help.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	e := &c.engine
	fs.StringVar(&e.Addr, "listen", d.Addr, "WebSocket listen address (host:port)")
	fs.StringVar(&c.admin, "admin", "127.0.0.1:9090", "admin HTTP address for /metrics, /healthz and /readyz (empty: off)")
	fs.IntVar(&e.Loops, "loops", 0, "event loops, 1 to 255; 0 means one per CPU")
	durationVar(fs, &e.PingInterval, "ping-interval", d.PingInterval, "ping a connection after this long without traffic")
	fs.IntVar(&e.MaxMissedPongs, "max-missed-pongs", d.MaxMissedPongs, "drop a connection after this many unanswered pings")
	fs.Int64Var(&e.MaxMessageBytes, "max-message-bytes", d.MaxMessageBytes, "largest message accepted, also after decompression (larger: close 1009)")
	durationVar(fs, &e.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "time allowed from TCP accept to a complete upgrade request")
	fs.IntVar(&e.MaxHandshakeBytes, "max-handshake-bytes", d.MaxHandshakeBytes, "largest upgrade request head (larger: HTTP 431)")
	durationVar(fs, &e.CloseTimeout, "close-timeout", d.CloseTimeout, "time allowed for the close handshake before TCP is closed")
	fs.IntVar(&e.MaxOutboundBytes, "max-outbound-bytes", d.MaxOutboundBytes, "per connection, the most bytes queued for a client that reads too slowly, 1024 to 1073741824 (past it: --slow-consumer)")
	e.SlowConsumer = d.SlowConsumer
	fs.IntVar(&e.MaxBroadcastBacklog, "max-broadcast-backlog", d.MaxBroadcastBacklog, "per event loop, the most bytes of broadcasts waiting to be delivered, 65536 to 17179869184; a broadcast past it is refused (SERVER_BUSY on /ws)")
	fs.Var((*policyValue)(&e.SlowConsumer), "slow-consumer", "a connection past --max-outbound-bytes: close (close 1013 and drop it) or drop (skip broadcasts to it until it catches up)")
	fs.BoolVar(&e.Compression, "compression", false, "offer permessage-deflate (RFC 7692) to clients")
	fs.IntVar(&e.CompressionLevel, "compression-level", d.CompressionLevel, "flate level for permessage-deflate, 1 (fastest) to 9")
	fs.IntVar(&e.CompressionMinBytes, "compression-min-bytes", d.CompressionMinBytes, "send messages shorter than this uncompressed")
	fs.StringVar(&c.echoPath, "echo-path", "", "serve an echo endpoint at this path, e.g. /echo (off when empty)")
	fs.StringVar(&c.subprotocols, "subprotocols", protocol.Subprotocol+","+protocol.SubprotocolMsgpack, "comma-separated subprotocols /ws accepts (clients may also ask for none, which is wsd.json); wsd.msgpack is served only when listed")
	durationVar(fs, &c.drainTimeout, "drain-timeout", 10*time.Second, "on SIGTERM/SIGINT, how long to wait for clients to finish the close handshake")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.configFile, "config", "", "TOML file with settings (keys are flag names)")

	fs.StringVar(&c.apiKey, "api-key", "", "key of the HTTP API on the admin listener (Authorization: apikey KEY); empty: no API")
	fs.StringVar(&c.nodeID, "node-id", "", "this node's id in client ids and /api/info (empty: random)")
	fs.BoolVar(&c.allowAnonymous, "allow-anonymous", false, "admit clients without a token when a JWT key is set (they may use public channels only); without any JWT key every client is anonymous")
	fs.BoolVar(&c.allowClientPublish, "allow-client-publish", false, "let any client publish to public channels (otherwise publishing needs a token's publish claim)")
	fs.StringVar(&c.jwtSecretFile, "jwt-secret-file", "", "file holding the HMAC secret for HS256/384/512 tokens")
	fs.StringVar(&c.jwtPublicKeys, "jwt-public-keys", "", "comma-separated PEM files of public keys (RSA, ECDSA, Ed25519) for RS*/ES*/EdDSA tokens")
	fs.StringVar(&c.jwtAudience, "jwt-audience", "", "if set, tokens must name this audience (aud)")
	fs.StringVar(&c.jwtIssuer, "jwt-issuer", "", "if set, tokens must come from this issuer (iss)")
	fs.StringVar(&c.tokenCookie, "token-cookie", "", "also read the token from this cookie (after Authorization: Bearer and the token query parameter)")
	fs.IntVar(&c.tokenCache, "token-cache", 65536, "verified tokens remembered until they expire, so reconnect storms skip signature checks; 0 off")
	fs.IntVar(&c.defaults.HistorySize, "history-size", 100, "publications each channel keeps for history and recovery (0: none)")
	durationVar(fs, &c.defaults.HistoryTTL, "history-ttl", 5*time.Minute, "how long a publication stays in history")
	fs.BoolVar(&c.defaults.Presence, "presence", false, "keep presence (who is subscribed) for channels")
	fs.BoolVar(&c.defaults.JoinLeave, "join-leave", false, "send join and leave events to channels' subscribers")
	fs.Var(&c.namespaces, "namespace", `channel options for channels "NAME:…" (repeatable): NAME:key=value,…; keys history_size, history_ttl, presence, join_leave; unset keys take the defaults`)
	fs.IntVar(&c.maxSubscriptions, "max-subscriptions", 128, "channels one connection may be subscribed to at once")
	fs.IntVar(&c.maxChannels, "max-channels", 100000, "channels with subscribers, and channel streams or presence sets, the node keeps at once (more: TOO_MANY_CHANNELS)")
	fs.Int64Var(&c.maxHistoryBytes, "max-history-bytes", 256<<20, "bytes of publication data kept in all histories together (oldest of a channel evicted first)")

	clusterFlags(fs, &c.cluster)

	fs.BoolVar(&e.ReusePort, "reuse-port", false, "set SO_REUSEPORT so several wsd processes can listen on one port")
	fs.IntVar(&e.MaxConns, "max-conns", 0, "connections open at once, handshaking ones included (past it: HTTP 503 at accept); 0 means the open-file limit minus 128")
	fs.Float64Var(&e.MaxHandshakesPerSec, "max-handshakes-per-sec", 0, "new connections per second for the whole server, to pace reconnect storms (past it: 503 with a Retry-After giving each refused client a slot at the pace); 0 off")
	durationVar(fs, &e.RetryAfterMax, "retry-after-max", d.RetryAfterMax, "largest retry hint: the Retry-After of full refusals and the drain's 1001 reason are picked from 1s to this at random; paced refusals' slots reach this at most")
	fs.IntVar(&e.MaxConnsPerIP, "max-conns-per-ip", 0, "connections from one client address, IPv6 per /64 (past it: 429); 0 off")
	fs.Float64Var(&e.HandshakeRatePerIP, "handshake-rate-per-ip", 0, "new connections per second from one client address (past it: 429); 0 off")
	fs.IntVar(&e.HandshakeBurstPerIP, "handshake-burst-per-ip", 0, "burst of new connections from one client address; 0 means twice --handshake-rate-per-ip")
	fs.IntVar(&e.BanAfter, "ban-after", 0, "ban a client address after this many violations (per-address refusals, floods, untrusted PROXY headers) within --ban-window; 0 off")
	durationVar(fs, &e.BanWindow, "ban-window", d.BanWindow, "window in which --ban-after violations ban an address")
	durationVar(fs, &e.BanDuration, "ban-duration", d.BanDuration, "how long a ban lasts (refused with 429 at accept meanwhile)")
	fs.IntVar(&e.MaxTrackedIPs, "max-tracked-ips", d.MaxTrackedIPs, "client addresses the per-address rules keep state for (a new address past it: 503)")
	fs.Var(&c.trustedProxies, "trusted-proxies", "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For (or PROXY header, with --proxy-protocol) gives the client address")
	fs.BoolVar(&e.ProxyProtocol, "proxy-protocol", false, "trusted proxies open every connection with a PROXY protocol header (v1 or v2); without it they are refused")
	fs.StringVar(&c.allowedOrigins, "allowed-origins", "", "comma-separated Origin allow-list: scheme://host[:port], scheme://*.domain, or *; empty: any origin (past it: 403)")
	fs.BoolVar(&e.AllowSameOrigin, "allow-same-origin", true, "with --allowed-origins, also admit an Origin naming the request's own Host")
	fs.BoolVar(&e.AllowNoOrigin, "allow-no-origin", true, "with --allowed-origins, also admit requests without an Origin header (clients that are not browsers)")
	fs.Float64Var(&e.MessageRate, "max-messages-per-sec", 100, "data messages per second one connection may send (past its burst: RATE_LIMIT_EXCEEDED, then close 1008), up to 1000; 0 off")
	fs.IntVar(&e.MessageBurst, "message-burst", 0, "burst of data messages one connection may send; 0 means twice --max-messages-per-sec")
	fs.IntVar(&e.MaxRateStrikes, "rate-limit-strikes", d.MaxRateStrikes, "messages refused with RATE_LIMIT_EXCEEDED in a row (without slowing down) before the connection is closed with 1008")
	fs.Int64Var(&e.MaxInboundBytesPerSec, "max-inbound-bytes-per-sec", 1<<20, "bytes per second one connection may send, in bursts up to the larger of a second's worth and --max-message-bytes (past it: close 1008); 0 off")
	durationVar(fs, &e.IdleTimeout, "idle-timeout", 0, "close (1000) a connection that sent no data message for this long; pings do not count; 0 off")
	fs.BoolVar(&c.pprof, "pprof", false, "serve /debug/pprof/ on the admin listener")
	fs.BoolVar(&c.adminUI, "admin-ui", false, "serve the admin page at / on the admin listener (needs --admin and --api-key: the page works through the HTTP API)")
	fs.BoolVar(&c.printConfig, "print-config", false, "print the effective configuration as TOML (secrets masked) and exit")
	return fs
}

// prefixList is a comma-separated list of addresses and CIDR prefixes.
type prefixList []netip.Prefix

func (p *prefixList) Set(s string) error {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if strings.Contains(f, "/") {
			pr, err := netip.ParsePrefix(f)
			if err != nil {
				return fmt.Errorf("%q is not an address or CIDR prefix", f)
			}
			out = append(out, pr.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return fmt.Errorf("%q is not an address or CIDR prefix", f)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	*p = out
	return nil
}

func (p *prefixList) String() string {
	var ss []string
	for _, pr := range *p {
		ss = append(ss, pr.String())
	}
	return strings.Join(ss, ",")
}

func (p *prefixList) Get() any { return p.String() }

// durationValue is flag's own duration flag but for the message when the
// value does not parse: flag says only "parse error", which does not tell
// an operator who wrote "30" or "1 minute" what to write instead. The
// message is the same from a flag, a WSD_* variable or the TOML file,
// which all set the value through Set.
type durationValue time.Duration

const durationHint = "parse error (a duration such as 500ms, 20s or 1m)"

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(durationHint)
	}
	*d = durationValue(v)
	return nil
}

func (d *durationValue) String() string { return time.Duration(*d).String() }

// Get makes it a flag.Getter, like flag's own values.
func (d *durationValue) Get() any { return time.Duration(*d) }

func durationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// policyValue is the --slow-consumer flag. The engine parses the name, so
// the policies the flag accepts are always the ones the engine has, and its
// error lists them.
type policyValue engine.SlowConsumerPolicy

func (p *policyValue) Set(s string) error {
	v, err := engine.ParseSlowConsumerPolicy(s)
	if err != nil {
		return err
	}
	*p = policyValue(v)
	return nil
}

func (p *policyValue) String() string { return engine.SlowConsumerPolicy(*p).String() }

func (p *policyValue) Get() any { return engine.SlowConsumerPolicy(*p) }

func envName(flagName string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: wsd [flags]\n\nwsd is an event-loop WebSocket server. Every flag can also be set with the\n"+
		"environment variable shown, or as a key in the --config TOML file;\n"+
		"flags win over the environment, which wins over the file.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  --%s\n        %s\n        (default %s; env %s)\n", f.Name, f.Usage, def, envName(f.Name))
	})
	// Not a setting (see wantsVersion), so not in the flag set.
	fmt.Fprintf(w, "  --version\n        print the version, commit and Go version, and exit\n")
	fmt.Fprintf(w, "\nCommands:\n  wsd doctor --conns N [--procs K] [--local-clients]\n"+
		"        check this host's limits (rlimits, sysctls, memory, conntrack) for N connections and exit (wsd doctor -h)\n")
}

// parseConfig reads flags, environment and config file into a config. On
// --help it writes the usage to stdout and returns flag.ErrHelp.
func parseConfig(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	fs := newFlagSet(c)
	c.flags = fs
	err := ff.Parse(fs, args,
		ff.WithEnvVarPrefix(envPrefix),
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(tomlParser(fs)),
	)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, stdout)
			return nil, err
		}
		return nil, fmt.Errorf("%w (see wsd --help)", cleanFFError(err))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (all settings are flags)", fs.Arg(0))
	}
	if err := checkAddr(c.engine.Addr); err != nil {
		return nil, fmt.Errorf("invalid --listen %q: %v", c.engine.Addr, err)
	}
	if c.admin != "" {
		if err := checkAddr(c.admin); err != nil {
			return nil, fmt.Errorf("invalid --admin %q: %v (or empty for no admin server)", c.admin, err)
		}
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		return nil, err
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return nil, fmt.Errorf("invalid --log-format %q: want text or json", c.logFormat)
	}
	if c.echoPath != "" && (!strings.HasPrefix(c.echoPath, "/") || c.echoPath == "/ws") {
		return nil, fmt.Errorf("invalid --echo-path %q: want a path such as /echo, other than /ws", c.echoPath)
	}
	// The engine reads a zero field as "use the default". From an operator
	// 0 is no such request (it is more likely meant as "never" or "no
	// limit"), and a negative value is a typo: both are refused here, so
	// that the engine never sees them and wsd never runs with a setting
	// other than the one it was given.
	e := &c.engine
	for _, s := range []struct {
		name string
		ok   bool
	}{
		{"ping-interval", e.PingInterval > 0},
		{"max-missed-pongs", e.MaxMissedPongs > 0},
		{"max-message-bytes", e.MaxMessageBytes > 0},
		{"handshake-timeout", e.HandshakeTimeout > 0},
		{"close-timeout", e.CloseTimeout > 0},
		{"max-handshake-bytes", e.MaxHandshakeBytes > 0},
		{"max-outbound-bytes", e.MaxOutboundBytes > 0},
		{"max-broadcast-backlog", e.MaxBroadcastBacklog > 0},
		{"drain-timeout", c.drainTimeout > 0},
		{"history-ttl", c.defaults.HistoryTTL > 0},
		{"max-subscriptions", c.maxSubscriptions > 0},
		{"max-channels", c.maxChannels > 0},
		{"max-history-bytes", c.maxHistoryBytes > 0},
		{"token-cache", c.tokenCache >= 0},
	} {
		if !s.ok {
			f := fs.Lookup(s.name)
			return nil, fmt.Errorf("invalid --%s %s: must be greater than 0 (default %s)", s.name, f.Value, f.DefValue)
		}
	}
	if c.adminUI && (c.admin == "" || c.apiKey == "") {
		return nil, errors.New("--admin-ui needs --admin and --api-key: the page reads and acts through the HTTP API, with its key")
	}
	if c.defaults.HistorySize < 0 {
		return nil, fmt.Errorf("invalid --history-size %d: must be 0 or more", c.defaults.HistorySize)
	}
	e.TrustedProxies = c.trustedProxies
	for _, o := range strings.Split(c.allowedOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			e.AllowedOrigins = append(e.AllowedOrigins, o)
		}
	}
	for _, s := range []struct {
		name string
		ok   bool
	}{
		{"max-conns", e.MaxConns >= 0},
		{"max-handshakes-per-sec", e.MaxHandshakesPerSec >= 0},
		{"retry-after-max", e.RetryAfterMax > 0},
		{"max-conns-per-ip", e.MaxConnsPerIP >= 0},
		{"handshake-rate-per-ip", e.HandshakeRatePerIP >= 0},
		{"handshake-burst-per-ip", e.HandshakeBurstPerIP >= 0},
		{"ban-after", e.BanAfter >= 0},
		{"ban-window", e.BanWindow > 0},
		{"ban-duration", e.BanDuration > 0},
		{"max-tracked-ips", e.MaxTrackedIPs > 0},
		{"max-messages-per-sec", e.MessageRate >= 0},
		{"message-burst", e.MessageBurst >= 0},
		{"rate-limit-strikes", e.MaxRateStrikes > 0},
		{"max-inbound-bytes-per-sec", e.MaxInboundBytesPerSec >= 0},
		{"idle-timeout", e.IdleTimeout >= 0},
	} {
		if !s.ok {
			f := fs.Lookup(s.name)
			return nil, fmt.Errorf("invalid --%s %s: out of range (default %s)", s.name, f.Value, f.DefValue)
		}
	}
	if e.ProxyProtocol && len(e.TrustedProxies) == 0 {
		return nil, errors.New("--proxy-protocol needs --trusted-proxies (the peers allowed to send PROXY headers)")
	}
	if c.nodeID != "" && !validNodeID(c.nodeID) {
		return nil, fmt.Errorf("invalid --node-id %q: letters, digits, '_' and '-' only, at most 32", c.nodeID)
	}
	if err := c.cluster.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// checkAddr checks that s is host:port with a numeric port, the host
// possibly empty (every interface). A malformed address would otherwise
// fail only when bound, with the exit code of a busy port (1) instead of
// that of a configuration error (2). Whether the host resolves and the
// port is free is for the bind to say.
func checkAddr(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err) // without the address, which the caller quotes
		}
		return fmt.Errorf("%v; want host:port, e.g. :8080 or 127.0.0.1:8080", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

var ffEnvError = regexp.MustCompile(`^error parsing environment variables: error setting flag "([^"]+)" from environment variable "([^"]+)": (.*)$`)

// cleanFFError turns ff's nested messages into one line naming the setting.
func cleanFFError(err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error parsing commandline arguments: ")
	if m := ffEnvError.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("invalid %s (--%s): %s", m[2], m[1], m[3])
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = "config file: " + msg
	}
	return errors.New(msg)
}

// tomlParser reads a TOML config file whose keys are flag names. Unknown
// keys are errors, naming the key.
func tomlParser(fs *flag.FlagSet) ff.ConfigFileParser {
	return func(r io.Reader, set func(name, value string) error) error {
		var m map[string]any
		md, err := toml.NewDecoder(r).Decode(&m)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		_ = md
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "config" || fs.Lookup(k) == nil {
				return fmt.Errorf("config file: unknown key %q", k)
			}
			var v string
			switch x := m[k].(type) {
			case []any:
				if _, multi := fs.Lookup(k).Value.(multiValue); multi {
					for _, p := range x {
						if err := set(k, fmt.Sprint(p)); err != nil {
							return fmt.Errorf("config file: key %q: %w", k, errors.Unwrap(err))
						}
					}
					continue
				}
				parts := make([]string, len(x))
				for i, p := range x {
					parts[i] = fmt.Sprint(p)
				}
				v = strings.Join(parts, ",")
			case map[string]any:
				return fmt.Errorf("config file: key %q: tables are not settings", k)
			default:
				v = fmt.Sprint(x)
			}
			if err := set(k, v); err != nil {
				return fmt.Errorf("config file: key %q: %w", k, errors.Unwrap(err))
			}
		}
		return nil
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// settings returns the settings in effect, one attribute per flag, named
// after it: for those the engine takes, its value as the engine uses it
// (from eff, the server's Config: defaults filled in, loops 0 resolved to a
// count), for the others the value parsed. It walks the flag set, so a new
// flag is logged even if no one adds it here (with its parsed value), and
// secrets (see isSecret) are masked.
func (c *config) settings(eff engine.Config) []slog.Attr {
	fromEngine := map[string]any{
		"listen":                 eff.Addr,
		"loops":                  eff.Loops,
		"ping-interval":          eff.PingInterval,
		"max-missed-pongs":       eff.MaxMissedPongs,
		"max-message-bytes":      eff.MaxMessageBytes,
		"handshake-timeout":      eff.HandshakeTimeout,
		"max-handshake-bytes":    eff.MaxHandshakeBytes,
		"close-timeout":          eff.CloseTimeout,
		"max-outbound-bytes":     eff.MaxOutboundBytes,
		"max-broadcast-backlog":  eff.MaxBroadcastBacklog,
		"slow-consumer":          eff.SlowConsumer.String(), // not its number
		"compression":            eff.Compression,
		"compression-level":      eff.CompressionLevel,
		"compression-min-bytes":  eff.CompressionMinBytes,
		"max-conns":              eff.MaxConns,
		"handshake-burst-per-ip": eff.HandshakeBurstPerIP,
		"message-burst":          eff.MessageBurst,
	}
	var attrs []slog.Attr
	c.flags.VisitAll(func(f *flag.Flag) {
		var v any = f.Value.String()
		if g, ok := f.Value.(flag.Getter); ok {
			v = g.Get() // typed: a duration stays a duration
		}
		if ev, ok := fromEngine[f.Name]; ok {
			v = ev
		}
		if isSecret(f.Name) {
			v = "" // unset
			if f.Value.String() != "" {
				v = "[masked]"
			}
		}
		attrs = append(attrs, slog.Any(f.Name, v))
	})
	return attrs
}

// writeConfig writes settings as a TOML file that --config reads back.
// Secrets are written as comments: a file with a masked value in it would
// set that value.
func writeConfig(w io.Writer, attrs []slog.Attr) {
	fmt.Fprintln(w, "# wsd's effective configuration (wsd --print-config); keys are flag names.")
	for _, a := range attrs {
		if a.Key == "config" || a.Key == "print-config" {
			continue
		}
		var v string
		switch x := a.Value.Any().(type) {
		case bool, int, int64, uint, uint64:
			v = fmt.Sprint(x)
		case float64:
			v = strconv.FormatFloat(x, 'f', -1, 64)
		case time.Duration:
			v = strconv.Quote(x.String())
		default:
			v = strconv.Quote(fmt.Sprint(x))
		}
		if isSecret(a.Key) && a.Value.String() != "" {
			fmt.Fprintf(w, "# %s = (set; masked)\n", a.Key)
			continue
		}
		fmt.Fprintf(w, "%s = %s\n", a.Key, v)
	}
}

// isSecret reports whether a setting holds a credential, judged by its
// name, so that a flag added later (an --admin-token, say) is masked in the
// settings line without anyone having to remember it; masking a key file's
// path too is the cheaper mistake.
func isSecret(name string) bool {
	switch name {
	case "token-cache", "token-cookie": // a count and a cookie's name: no credential
		return false
	}
	for _, w := range []string{"secret", "password", "token", "key", "credential"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

func (c *config) protocols() []string {
	var out []string
	for _, p := range strings.Split(c.subprotocols, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// verifier returns the JWT verifier for the configured keys, or nil when
// none is set (every client is then anonymous).
func (c *config) verifier() (*auth.Verifier, error) {
	var ac auth.Config
	if c.jwtSecretFile != "" {
		b, err := os.ReadFile(c.jwtSecretFile)
		if err != nil {
			return nil, fmt.Errorf("--jwt-secret-file: %v", err)
		}
		ac.HMACSecret = bytes.TrimRight(b, "\r\n")
	}
	for _, f := range strings.Split(c.jwtPublicKeys, ",") {
		if f = strings.TrimSpace(f); f != "" {
			ac.PublicKeyFiles = append(ac.PublicKeyFiles, f)
		}
	}
	if ac.HMACSecret == nil && len(ac.PublicKeyFiles) == 0 {
		if c.jwtAudience != "" || c.jwtIssuer != "" || c.tokenCookie != "" {
			return nil, errors.New("--jwt-audience, --jwt-issuer and --token-cookie need a key (--jwt-secret-file or --jwt-public-keys)")
		}
		return nil, nil
	}
	ac.Audience, ac.Issuer = c.jwtAudience, c.jwtIssuer
	ac.CacheSize = c.tokenCache
	if c.tokenCache == 0 {
		ac.CacheSize = -1
	}
	v, err := auth.NewVerifier(ac)
	if err != nil {
		return nil, fmt.Errorf("JWT keys: %w", err)
	}
	return v, nil
}
