#!/usr/bin/env bash
# bench/features.sh - what user features cost: modelgate with features off against features on
# (warm Redis, cold local cache: every request makes one Redis round trip), same machine,
# 127.0.0.1 only. Prints the p50 added per request and the throughput ratio.
#
#   bench/features.sh                  3 interleaved rounds (a minute or two)
#   QUICK=1 bench/features.sh          1 round, small counts
#   MODELGATE_BIN=build-release/gateway/modelgate bench/features.sh   (use an optimized build:
#                                      a Sanitize build measures ASan, not the gateway)
#
# Profiles: lat = h2load -c1 -m1 with one user (p50 of the request time, from --log-file);
# thr = USERS h2load processes at once, each with its own x-user-id and -c2 -m5 (10 streams in
# flight per user), summed req/s. Concurrent lookups of one user share one fetch, so at most 10
# lookups per user are merged here; with local.ttl_ms = 0 and stale_ms = 0 no request is
# answered from the worker's cache. MariaDB is not configured: the Redis marker of every user
# exists, so it would never be asked. Servers run in their own sessions under a temp dir in
# /dev/shm; everything is stopped and removed on exit.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_lat="-n 2000 -c 1 -m 1 -t 1" d_thr_n=2000
else
    d_rounds=3 d_lat="-n 10000 -c 1 -m 1 -t 1" d_thr_n=10000
fi
ROUNDS=${ROUNDS:-$d_rounds}
LAT_ARGS=${LAT_ARGS:-$d_lat}
THR_N=${THR_N:-$d_thr_n} # requests per h2load process in thr
USERS=${USERS:-10}
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
PORT_BASE=${PORT_BASE:-19200}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
BE_PORT=$((PORT_BASE + 1)) REDIS_PORT=$((PORT_BASE + 2)) OFF_PORT=$((PORT_BASE + 3)) ON_PORT=$((PORT_BASE + 4))
HOST=bench-production.modelgate.local

say() { printf '%s\n' "$*"; }
die() { say "bench: FATAL: $*" >&2; exit 1; }
for t in h2load nghttpd redis-server redis-cli setsid timeout; do
    command -v $t >/dev/null || die "$t not found (scripts/install-deps.sh installs it)"
done
[ -x "$MODELGATE_BIN" ] || die "no gateway at $MODELGATE_BIN (build it, or set MODELGATE_BIN)"
W=$(mktemp -d /dev/shm/mg-fbench.XXXXXX) || die "cannot create a work dir"
SIDS=()
cleanup() {
    for s in "${SIDS[@]}"; do kill -TERM -- "-$s" 2>/dev/null; done
    sleep 0.3
    for s in "${SIDS[@]}"; do kill -KILL -- "-$s" 2>/dev/null; done
    [ "${KEEP:-0}" = 1 ] && say "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # name cmd...: in its own session, so that cleanup stops its whole tree
    local name=$1; shift
    setsid "$@" >"$W/$name.out" 2>&1 </dev/null &
    SIDS+=($!)
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1: $(tail -3 "$W"/*.out)"
}

mkdir -p "$W/htdocs/v1"
printf '{"prediction":7,"probabilities":[0.01,0.02,0.9],"model_version":"digits-v3","ms":0.2}\n' \
    >"$W/htdocs/v1/predict"
printf '{"inputs":[[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3]]}' >"$W/body.json"
start backend nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "$BE_PORT"
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
REDIS_SID=${SIDS[-1]}
declare -A SID_OF=()
wait_port "$BE_PORT"
wait_port "$REDIS_PORT"
# warm Redis: every user has a profile hash and 50 recent items (about 600 bytes of JSON)
for u in $(seq 0 $((USERS))); do
    k="mgf:v1:bench:user$u"
    redis-cli -p "$REDIS_PORT" hset "$k:profile" age 31 country fr plan pro segment s17 >/dev/null
    redis-cli -p "$REDIS_PORT" rpush "$k:recent" $(seq -f "item%06g" 1000 1049) >/dev/null
    redis-cli -p "$REDIS_PORT" set "$k" 1 >/dev/null
done
cat >"$W/routes.json" <<JSON
{"domain": "modelgate.local", "services": {"svc": {"protocol": "h2c", "pods": ["127.0.0.1:$BE_PORT"]}},
 "routes": [{"app": "bench", "env": "production", "service": "svc"}]}
JSON
for mode in off on; do
    port=$OFF_PORT feats=''
    if [ $mode = on ]; then
        port=$ON_PORT
        feats=", \"features\": {\"redis\": {\"host\": \"127.0.0.1\", \"port\": $REDIS_PORT},
          \"local\": {\"ttl_ms\": 0, \"stale_ms\": 0, \"negative_ttl_ms\": 0},
          \"apps\": {\"bench\": {\"timeout_ms\": 50, \"groups\": [{\"name\": \"profile\", \"type\": \"hash\"},
                     {\"name\": \"recent\", \"type\": \"list\", \"max_items\": 50}]}}}"
    fi
    cat >"$W/gw-$mode.json" <<JSON
{"listen": ["127.0.0.1:$port"], "workers": 1, "routes": "routes.json", "access_log": null,
 "log_level": "warn"$feats}
JSON
    start "gw-$mode" "$MODELGATE_BIN" --config "$W/gw-$mode.json"
    SID_OF[$port]=${SIDS[-1]}
    wait_port "$port"
done
sleep 0.5 # the features worker connects to Redis

# p50 (us) of h2load's --log-file (column 3: request time in us)
p50() { sort -n -k3,3 "$1" | awk '{a[NR]=$3} END {print a[int((NR+1)/2)]}'; }
run_lat() { # port user -> p50 us
    local log="$W/lat.$1.log"
    timeout "$RUN_TIMEOUT" h2load $LAT_ARGS -d "$W/body.json" -H "content-type: application/json" \
        -H "x-user-id: user$2" --log-file="$log" "http://$HOST:$1/v1/predict" \
        --connect-to=127.0.0.1:"$1" >/dev/null 2>&1 || die "h2load failed on port $1"
    p50 "$log"
}
cpu_ticks() { # session id -> utime+stime ticks of the session's processes
    local t=0 p
    for p in $(pgrep -s "$1"); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
run_thr() { # port -> summed req/s of USERS parallel h2load processes; CPU into $W/cpu.PORT
    local pids=() i gw_sid=${SID_OF[$1]} g0 r0
    g0=$(cpu_ticks "$gw_sid") r0=$(cpu_ticks "$REDIS_SID")
    for i in $(seq 1 "$USERS"); do
        timeout "$RUN_TIMEOUT" h2load -n "$THR_N" -c 2 -m 5 -t 1 -d "$W/body.json" \
            -H "content-type: application/json" -H "x-user-id: user$i" \
            "http://$HOST:$1/v1/predict" --connect-to=127.0.0.1:"$1" >"$W/thr.$1.$i.out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    echo "$(($(cpu_ticks "$gw_sid") - g0)) $(($(cpu_ticks "$REDIS_SID") - r0))" >"$W/cpu.$1"
    cat "$W"/thr."$1".*.out | awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i ~ /req\/s/) s+=$(i-1)} END {printf "%.0f\n", s}'
}
check_features() { # the on gateway really attaches features
    curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' -H "x-user-id: user1" \
        --connect-to "$HOST:$ON_PORT:127.0.0.1:$ON_PORT" "http://$HOST:$ON_PORT/v1/predict" \
        -d @"$W/body.json" | grep -q 200 || die "the features-on gateway does not answer 200"
}
check_features
run_lat "$OFF_PORT" 1 >/dev/null # warm-up
run_lat "$ON_PORT" 1 >/dev/null
declare -a L_OFF L_ON T_OFF T_ON C_OFF C_ON C_REDIS
HZ=$(getconf CLK_TCK)
us_per_req() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}'; }
nreq=$((THR_N * USERS))
for r in $(seq 1 "$ROUNDS"); do
    L_OFF+=("$(run_lat "$OFF_PORT" 1)") L_ON+=("$(run_lat "$ON_PORT" 1)")
    T_OFF+=("$(run_thr "$OFF_PORT")") T_ON+=("$(run_thr "$ON_PORT")")
    read -r g _ <"$W/cpu.$OFF_PORT"
    C_OFF+=("$(us_per_req "$g" "$nreq")")
    read -r g rd <"$W/cpu.$ON_PORT"
    C_ON+=("$(us_per_req "$g" "$nreq")") C_REDIS+=("$(us_per_req "$rd" "$nreq")")
    say "round $r: p50 off ${L_OFF[-1]} us, on ${L_ON[-1]} us; req/s off ${T_OFF[-1]}, on ${T_ON[-1]};" \
        "gateway CPU us/req off ${C_OFF[-1]}, on ${C_ON[-1]} (+ redis-server ${C_REDIS[-1]})"
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lo=$(med "${L_OFF[@]}") ln=$(med "${L_ON[@]}") to=$(med "${T_OFF[@]}") tn=$(med "${T_ON[@]}")
say ""
say "features off: p50 ${lo} us, ${to} req/s, gateway CPU $(med "${C_OFF[@]}") us/req"
say "features on : p50 ${ln} us, ${tn} req/s, gateway CPU $(med "${C_ON[@]}") us/req," \
    "redis-server CPU $(med "${C_REDIS[@]}") us/req (warm Redis, cold local cache, 1 worker)"
awk -v lo="$lo" -v ln="$ln" -v to="$to" -v tn="$tn" 'BEGIN {
    printf "added p50: %.3f ms (target < 0.3 ms); throughput on/off: %.3f (target > 0.90)\n",
           (ln - lo) / 1000.0, tn / to }'
