#!/usr/bin/env bash
# scripts/install-deps.sh - installs the Debian packages Modelgate needs to build, test and
# benchmark, and only those that are missing.
#
# Idempotent: when everything is installed it only runs dpkg-query and exits (no apt-get update,
# no network, no root needed). Works without a terminal (CI): apt runs non-interactively, and
# waits for the dpkg lock instead of failing when another apt is running. Uses sudo only when
# not root. Target: Debian 12 (bookworm).
#
# To add a dependency: one package per line in PACKAGES below, with why it is needed, and a
# sentence in README.md's "Dependencies" section.
set -euo pipefail

PACKAGES=(
    # --- build
    build-essential      # gcc, make, libc headers: the compiler the project is built with
    cmake                # the build system (CMakeLists.txt, CTest)
    pkg-config           # how CMake finds nghttp2, libevent, jansson, openssl, cmocka
    clang                # libFuzzer targets (MG_FUZZ) and a second compiler's warnings
    libnghttp2-dev       # HTTP/2 framing, HPACK and flow control for client and upstream sides
    libevent-dev         # one event loop per worker thread, with OpenSSL bufferevents
    libssl-dev           # TLS with ALPN (h2, http/1.1) on the listeners
    libjansson-dev       # JSON: config, routing documents, admin API, test assertions
    node-llhttp          # llhttp C sources: the HTTP/1.1 parser, compiled into the gateway
    libxgboost-dev       # XGBoost C API: the runtime's xgboost model kind (backends/runtime)
    libopenblas-dev      # CBLAS (gemv): the runtime's linear and embedding model kinds
    libhiredis-dev       # Redis client with a libevent adapter: user features, async
    libmariadb-dev       # MariaDB Connector/C: request log rows and the features table
    libc-ares-dev        # c-ares: DNS discovery of pods, with TCP for big answers
    # --- servers the local stack and the tests start privately (loopback, own data dirs)
    mariadb-server       # the request log and the features' source of truth
    redis-server         # the user-features cache
    dnsmasq              # a DNS server on a loopback port: DNS discovery tests and demo
    # --- tests
    libcmocka-dev        # unit tests (tests/unit)
    openssl              # generates TLS test certificates (conf/gen-test-certs.sh)
    curl                 # end-to-end tests and the local stack's example request
    nghttp2-client       # nghttp (e2e client) and h2load (benchmarks)
    nghttp2-server       # nghttpd: the benchmark's backend (bench/run.sh)
    nghttp2-proxy        # nghttpx: the peer proxy the benchmark compares against
    haproxy              # a second peer proxy, and HTTP/1.1 / h2 interop in e2e tests
    valgrind             # callgrind: instructions per request (bench/instructions.sh)
    python3-pytest       # end-to-end test runner (tests/e2e)
    python3-httpx        # HTTP/1.1 and HTTP/2 client for e2e tests
    python3-h2           # raw HTTP/2 frames for protocol-level e2e tests
    python3-hpack        # header blocks a test pod sends as it likes (no Huffman, bad :status)
    python3-grpcio       # gRPC client: checks trailers and streaming through the gateway
    python3-sklearn      # trains the runtime's test and demo models (digits data set included)
    python3-xgboost      # trains and saves the XGBoost test and demo models
    python3-numpy        # writes embedding indexes and linear model files (runtime tools/)
    procps               # pgrep/ps: tests and benchmarks find and measure processes
    iproute2             # ss: tests and benchmarks check which ports are free or listening
    python3-redis        # e2e tests read and write Redis directly to check the key layout
    python3-pymysql      # e2e tests count request-log rows and seed features in MariaDB
    python3-pyflakes     # lint.python: unused imports and names in the Python tests and tools
)

missing=()
for p in "${PACKAGES[@]}"; do
    # "install ok installed" is the only state in which the files are really there; a package
    # that is half-installed or removed-but-configured counts as missing.
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages are installed"
    exit 0
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo -n) # -n: fail instead of prompting when there is no terminal
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt (or another engineer's script) may hold the dpkg lock: wait up to 10 minutes.
APT=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
     -o Dpkg::Options::=--force-confold)
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "${APT[@]}" update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}"

# Some packages (haproxy, nghttp2-proxy, the servers) ship a service that starts on install; the project runs
# its own instances on its own ports, so a stray system daemon is only in the way. Stop it once,
# right after install; never touch services that were installed before.
for p in "${missing[@]}"; do
    case $p in
    haproxy | nghttp2-proxy | mariadb-server | redis-server | dnsmasq)
        case $p in nghttp2-proxy) svc=nghttpx ;; mariadb-server) svc=mariadb ;; *) svc=$p ;; esac
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
            "${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
        ;;
    esac
done

still=()
for p in "${missing[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
    echo "install-deps: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "install-deps: done"
