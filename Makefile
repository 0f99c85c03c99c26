# wsd: the two set-up commands are `make run` and `make test`.
GO        ?= go
BIN       := bin
NODE_DIR  := internal/interop/node
FUZZTIME  ?= 30s

.PHONY: all build run test test-go test-js test-e2e interop-deps conformance fuzz bench bench-smoke bench-idle clean generate

all: build

## build: compile bin/wsd, bin/wsbench and bin/gnetecho (the baseline server of bench/README.md) (with the commit, for wsd --version, when built from git
## even where GOFLAGS says -buildvcs=false)
BUILDFLAGS ?= -buildvcs=auto
build:
	$(GO) build $(BUILDFLAGS) -o $(BIN)/wsd ./cmd/wsd
	$(GO) build $(BUILDFLAGS) -o $(BIN)/wsbench ./bench/cmd/wsbench
	$(GO) build $(BUILDFLAGS) -o $(BIN)/gnetecho ./bench/cmd/gnetecho

## run: run wsd with its embedded defaults (ws on :8080, admin on 127.0.0.1:9090) and the
## HTTP API on with the key API_KEY (default "dev"; the admin listener is loopback-only); more flags in ARGS
## (make run ARGS=--admin-ui: the admin page at http://127.0.0.1:9090/)
API_KEY ?= dev
run: build
	$(BIN)/wsd --api-key $(API_KEY) $(ARGS)

## test: every test, with the race detector (installs the Node interop client's npm package first),
## and the JS client's tests
test: interop-deps test-go test-js

test-go:
	$(GO) vet ./...
	$(GO) test -race -timeout 9m ./...
	$(GO) test -count=1 -run 'Allocs' ./frame ./engine ./auth ./protocol/...  # allocation claims, without the race detector

## test-js: the JS client (clients/js): install its dev dependencies, build it (ESM, types, browser
## bundles) and run its tests (node --test) against bin/wsd processes it starts (well under a minute)
test-js:
	@if command -v npm >/dev/null 2>&1; then \
		$(GO) build -o $(BIN)/wsd ./cmd/wsd && \
		cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test; \
	else \
		echo "npm not found: the JS client's tests are skipped"; \
	fi

## test-e2e: the JS client's bundle in a real browser (Debian's Chromium: apt-get install chromium; the
## test is skipped without it), driven by puppeteer-core, against bin/wsd: a cut, a drain and a restart,
## and the admin page against /metrics; then a drain and restart of one of two nodes on a redis-server of
## the test's own (skipped without redis-server) (~15 s). Not part of make test; .ci/run installs
## Chromium and redis-server and runs it.
test-e2e:
	$(GO) build -o $(BIN)/wsd ./cmd/wsd
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run build
	cd clients/js/e2e && npm ci --no-audit --no-fund --loglevel=error && npm test

interop-deps:
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: the Node interop test will be skipped"; \
	fi

## conformance: the Autobahn|Testsuite server cases against --echo-path (see .ci/conformance)
conformance: build
	bash .ci/conformance

## fuzz: run each fuzz target for FUZZTIME (default 30s)
fuzz:
	$(GO) test ./frame -run '^$$' -fuzz '^FuzzDecoder$$' -fuzztime $(FUZZTIME)
	$(GO) test ./frame -run '^$$' -fuzz '^FuzzUTF8$$' -fuzztime $(FUZZTIME)
	$(GO) test ./frame -run '^$$' -fuzz '^FuzzInflate$$' -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzHandshake$$' -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz '^FuzzInbound$$' -fuzztime $(FUZZTIME)
	$(GO) test ./protocol/mpjson -run '^$$' -fuzz '^FuzzToJSON$$' -fuzztime $(FUZZTIME)

## bench: allocation and speed benchmarks of the hot paths
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./frame ./engine ./session

## bench-smoke: idle, connect and echo at a small scale against a wsd and the baseline (gnetecho)
## that it starts itself, with one table of figures (well under a minute)
bench-smoke: build
	$(BIN)/wsbench smoke

## bench-idle: N idle connections against a running wsd (see bench/README.md); N=19000 by default
N ?= 19000
bench-idle: build
	$(BIN)/wsbench idle -n $(N)

## generate: regenerate the easyjson marshalers
generate:
	$(GO) generate ./...

clean:
	rm -rf $(BIN)
