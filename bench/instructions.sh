#!/usr/bin/env bash
# bench/instructions.sh - user-space instructions per request, modelgate against nghttpx, counted
# by valgrind's callgrind: a cost measure that does not move with the machine's load, for the
# changes too small to see in req/s or CPU time on a shared VM. 127.0.0.1 only.
#
#   bench/instructions.sh                      h2c and TLS, modelgate and nghttpx (~3 min)
#   PROTOS=h2c CONTESTANTS=modelgate bench/instructions.sh
#   MODELGATE_BIN=/path/modelgate bench/instructions.sh
#   MODELGATE_ARGS="--access-log /dev/shm/a.log" bench/instructions.sh   more modelgate flags
#                                              (nghttpx writes its access log to /dev/null)
#   COUNT=client bench/instructions.sh         what h2load spends per request through each one
#   COUNT=backend bench/instructions.sh        what the backend (nghttpd) spends per request
#
# For each contestant and protocol: two runs under callgrind, h2load -c 50 -m 10 POSTs of N1
# and N2 requests against an nghttpd backend; (instructions of run 2 - run 1) / (N2 - N1) is
# the cost of one request, start-up and handshakes cancelled out. Kernel work (system calls,
# TCP) is not counted: compare with the CPU time of bench/run.sh for the whole picture.
# KEEP=1 keeps the callgrind files (callgrind_annotate shows where the instructions go).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
MODELGATE_ARGS=${MODELGATE_ARGS:-} # split on spaces
CONTESTANTS=${CONTESTANTS:-modelgate nghttpx}
PROTOS=${PROTOS:-h2c tls}
N1=${N1:-5000}
N2=${N2:-25000}
PORT_BASE=${PORT_BASE:-19300} # backend +1, contestant +2 (h2c) and +3 (TLS)
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
# whose instructions: the contestant (proxy), or what it costs the others: the client (h2load)
# or the backend, whose work depends on what the proxy sends them (fields to decode, how
# frames are batched). The process counted runs under callgrind, the others natively.
COUNT=${COUNT:-proxy}
case $COUNT in proxy | client | backend) ;; *) echo "COUNT must be proxy, client or backend" >&2; exit 2 ;; esac

# say die start stop wait_port ..., SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-ibench
need_tools valgrind callgrind_annotate h2load nghttpd openssl
for c in $CONTESTANTS; do
    case $c in
    modelgate) [ -x "$MODELGATE_BIN" ] || die "no modelgate binary at $MODELGATE_BIN (build it first)" ;;
    nghttpx) need_tools nghttpx ;;
    *) die "unknown contestant '$c' (modelgate, nghttpx)" ;;
    esac
done

BE_PORT=$((PORT_BASE + 1)) H2C_PORT=$((PORT_BASE + 2)) TLS_PORT=$((PORT_BASE + 3))
mkdir -p "$W/docs"
printf '%s' '{"prediction":7,"probabilities":[0.01,0.02,0.9],"model_version":"digits-v3","ms":0.2}' \
    >"$W/docs/predict"
printf '%s' '{"inputs":[[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3]]}' >"$W/body.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$W/key.pem" -out "$W/cert.pem" >/dev/null 2>&1 || die "openssl could not make a certificate"
# the backend restarts for every count, so that its count covers that run alone
start_backend() {
    local out=$1
    if [ "$COUNT" = backend ]; then
        start backend "" valgrind --tool=callgrind --callgrind-out-file="$out.be.%p" \
            nghttpd --no-tls -d "$W/docs" "$BE_PORT"
        wait_port "$BE_PORT" 60 backend || die "nghttpd did not start under valgrind"
    else
        start backend "" nghttpd --no-tls -d "$W/docs" "$BE_PORT"
        wait_port "$BE_PORT" 10 backend || die "nghttpd did not start"
    fi
}
cat >"$W/nghttpx.conf" <<EOF
frontend=127.0.0.1,$H2C_PORT;no-tls
frontend=127.0.0.1,$TLS_PORT
backend=127.0.0.1,$BE_PORT;;proto=h2
workers=1
private-key-file=$W/key.pem
certificate-file=$W/cert.pem
no-ocsp=yes
accesslog-file=/dev/null
errorlog-file=$W/nghttpx.err
EOF

# instructions that COUNT's process spent for contestant $1, protocol $2, $3 requests
count() {
    local c=$1 proto=$2 n=$3 out="$W/cg.$1.$2.$3"
    local cmd wrap=() lgwrap=()
    if [ "$c" = modelgate ]; then
        cmd=("$MODELGATE_BIN" --listen "127.0.0.1:$H2C_PORT" --tls-listen "127.0.0.1:$TLS_PORT"
            --cert "$W/cert.pem" --key "$W/key.pem" --backend "127.0.0.1:$BE_PORT" --workers 1
            --log-level warn)
        # shellcheck disable=SC2206 # word splitting is the point
        cmd+=($MODELGATE_ARGS)
    else
        cmd=(nghttpx --conf="$W/nghttpx.conf")
    fi
    [ "$COUNT" = proxy ] && wrap=(valgrind --tool=callgrind --trace-children=yes
        --callgrind-out-file="$out.%p")
    [ "$COUNT" = client ] && lgwrap=(valgrind --tool=callgrind --callgrind-out-file="$out.lg.%p")
    start_backend "$out"
    start "cg-$c" "" "${wrap[@]}" "${cmd[@]}"
    wait_port "$TLS_PORT" 60 "cg-$c" || die "$c did not start (see $W/cg-$c.out)"
    sleep 1
    local url="http://127.0.0.1:$H2C_PORT/predict"
    [ "$proto" = tls ] && url="https://127.0.0.1:$TLS_PORT/predict"
    local got
    got=$(timeout "$RUN_TIMEOUT" "${lgwrap[@]}" h2load -n "$n" -c 50 -m 10 -t 1 -d "$W/body.json" \
        --tls13-ciphers=TLS_AES_128_GCM_SHA256 "$url" 2>&1 | grep -o '[0-9]* succeeded' | cut -d' ' -f1)
    stop "cg-$c"
    stop backend
    [ "${got:-0}" = "$n" ] || die "$c $proto: $got of $n requests succeeded"
    cat "$out".* | awk '/^summary:/ {s += $2} END {print s}'
}

printf '%-10s %-5s %14s\n' contestant proto "instr/request ($COUNT)"
for proto in $PROTOS; do
    for c in $CONTESTANTS; do
        a=$(count "$c" "$proto" "$N1") || exit 1
        b=$(count "$c" "$proto" "$N2") || exit 1
        printf '%-10s %-5s %14s\n' "$c" "$proto" "$(( (b - a) / (N2 - N1) ))"
    done
done
