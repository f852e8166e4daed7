# childflow: see README.md. `sudo make demo` and `sudo make test` set up
# everything they need on a fresh Debian machine (with Go installed).

GO        ?= go
BIN       := bin/childflow
APT_PKGS  := clang-16 llvm-16 libbpf-dev bpftool tshark iperf3 dnsutils curl iproute2 \
             python3 slirp4netns uidmap util-linux libcap2-bin
TEST_PKGS := tshark bpftool iperf3 dig curl nsenter slirp4netns python3

.PHONY: all build deps generate check-generate demo test test-unit fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/childflow

# deps installs the Debian packages the tests, the demo and regeneration use
# (as root, only what is missing) and downloads the Go modules.
deps:
	@missing=""; for t in $(TEST_PKGS) clang-16; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install: $(APT_PKGS)"; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi
	$(GO) mod download

# generate rebuilds gen/ from bpf/ (needs clang-16; building and testing do not).
generate:
	cd gen && $(GO) generate

# check-generate fails when gen/ is not what bpf/ compiles to.
check-generate:
	@tmp=$$(mktemp -d) && cp -r gen bpf go.mod go.sum $$tmp/ && \
	(cd $$tmp/gen && $(GO) generate) && \
	if ! diff -r gen $$tmp/gen >/dev/null; then \
		echo "gen/ is out of date with bpf/: run make generate and commit"; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "gen/ is up to date"

demo: deps build
	@sh demo/run.sh $(BIN)

test: deps build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# test-unit runs the unprivileged unit tests with the race detector.
test-unit:
	$(GO) test -race -count=1 ./flows/ ./policy/ ./sniff/ ./capture/ ./report/ ./profile/ ./dns/ ./proxy/ ./seccomp/

fuzz:
	$(GO) test -run XXX -fuzz FuzzReadLog -fuzztime 10s ./flows/
	$(GO) test -run XXX -fuzz FuzzLoad -fuzztime 10s ./profile/

bench: deps build
	@sh bench/run.sh $(BIN)

clean:
	rm -rf bin demo/out
