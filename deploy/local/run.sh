#!/usr/bin/env bash
# deploy/local/run.sh - the local stack: two demo pods and the gateway on loopback, in the background.
#
#   deploy/local/run.sh [start]   install what is missing, build, (re)start the stack, try a request
#   deploy/local/run.sh stop      stop it (gateway first, so it drains; then the pods)
#   deploy/local/run.sh status    what runs, with PIDs and ports; exit 0 all up, 3 all down, 1 partly
#   deploy/local/run.sh reload    SIGHUP the gateway: re-read .run/local/routes.json
#
# Idempotent: a second `run.sh` stops the first run's processes (found by their PID files, checked
# against the process start time, never by name) and starts fresh ones. Works as root on a fresh
# Debian 12 and without a terminal. Everything it writes is under .run/local/ in the repository:
#   gateway.json, routes.json   written anew on every start (edit routes.json + `reload` to play)
#   tls/cert.pem, tls/key.pem   self-signed (conf/gen-test-certs.sh), kept across runs
#   NAME.log, NAME.log.prev     stdout+stderr of each component, this run's and the previous one's
#   NAME.pid, NAME.start        PID and /proc start time of each component; NAME.ports its ports
#   access.log                  the gateway's access log (JSON lines; `kill -USR1` reopens it)
#   build.log                   output of the last cmake configure + build
#
# Knobs (environment; defaults in brackets):
#   MG_LOCAL_HTTP_PORT [18480]  gateway cleartext listener (HTTP/2 prior knowledge + HTTP/1.1)
#   MG_LOCAL_TLS_PORT [18443]   gateway TLS listener (ALPN h2, http/1.1)
#   MG_LOCAL_POD_A_PORT [18501], MG_LOCAL_POD_B_PORT [18502]   the model v1 pods
#   MG_LOCAL_POD_C_PORT [18503]   the model v2 pod (the 10% canary)
#   MG_LOCAL_ADMIN_PORT [18490]   the gateway's admin listener (/metrics)
#   MG_LOCAL_MARIADB_PORT [18306], MG_LOCAL_REDIS_PORT [18379]   the stack's own MariaDB and Redis
#   MG_LOCAL_WORKERS [2]        gateway worker threads (0 = one per core)
#   MG_LOCAL_START_TIMEOUT [30] seconds each component gets to listen on its ports
#   MG_LOCAL_SKIP_DEPS=1        do not run scripts/install-deps.sh
#   MG_LOCAL_SKIP_BUILD=1       do not configure/build (use build/gateway/modelgate as it is)
# Ports are recorded at start, so `stop` and `status` need no knobs.
#
# Adding a component (MariaDB, Redis, runtime pods ...): write start_NAME() with spawn + wait_ports
# (see start_pods), call it from cmd_start before what depends on it, and add NAME to COMPONENTS in
# start order; stop and status then handle it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=$ROOT/.run/local
BUILD_DIR=$ROOT/build
GATEWAY_BIN=$BUILD_DIR/gateway/modelgate
RUNTIME_BIN=$BUILD_DIR/backends/runtime/modelgate-runtime
TRAIN_PY=$ROOT/backends/runtime/tools/train_digits.py
PY=/usr/bin/python3

HOST=127.0.0.1
HTTP_PORT=${MG_LOCAL_HTTP_PORT:-18480}
TLS_PORT=${MG_LOCAL_TLS_PORT:-18443}
POD_A_PORT=${MG_LOCAL_POD_A_PORT:-18501}
POD_B_PORT=${MG_LOCAL_POD_B_PORT:-18502}
POD_C_PORT=${MG_LOCAL_POD_C_PORT:-18503}
ADMIN_PORT=${MG_LOCAL_ADMIN_PORT:-18490}
MARIADB_PORT=${MG_LOCAL_MARIADB_PORT:-18306}
REDIS_PORT=${MG_LOCAL_REDIS_PORT:-18379}
WORKERS=${MG_LOCAL_WORKERS:-2}
START_TIMEOUT=${MG_LOCAL_START_TIMEOUT:-30}
DRAIN_MS=10000                      # gateway.json timeouts_ms.drain
STOP_TIMEOUT=$((DRAIN_MS / 1000 + 5)) # SIGTERM, then SIGKILL after this many seconds

DOMAIN=modelgate.local
APP=digits ENV=production
# a 90/10 canary: model v1 (XGBoost) on pod-a and pod-b, model v2 (logistic regression) on pod-c
SERVICE=digits-production-v1 SERVICE_V2=digits-production-v2
VHOST=$APP-$ENV.$DOMAIN

# Every component the stack may run, in start order; stop goes in reverse.
COMPONENTS=(mariadb redis pod-a pod-b pod-c gateway)

# ---------------------------------------------------------------- plumbing
say() { printf '%s\n' "$*"; }
step() { printf 'run.sh: %s\n' "$*"; }
die() { printf 'run.sh: ERROR: %s\n' "$*" >&2; exit 1; }
rel() { case $1 in "$ROOT"/*) printf '%s' "${1#"$ROOT"/}" ;; *) printf '%s' "$1" ;; esac; }

# Tail of a component's log, for failure messages.
log_tail() {
    local log=$STATE/$1.log
    if [ -s "$log" ]; then
        printf -- '----- last lines of %s -----\n' "$(rel "$log")" >&2
        tail -n "${2:-25}" "$log" >&2
        printf -- '-----\n' >&2
    else
        printf '(%s is empty)\n' "$(rel "$log")" >&2
    fi
}

# proc_field PID N: field N (1-based, as in proc(5)) of /proc/PID/stat; fails if PID is gone.
# The comm field (2) may hold spaces and parentheses, so fields are counted after the last ')'.
proc_field() {
    local s n=$(($2 - 2))
    [ "$n" -ge 1 ] || return 1
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    # shellcheck disable=SC2086 # split on purpose
    set -- $s
    printf '%s' "${!n}"
}

# pid_of NAME: prints the PID if NAME runs (PID file present, process alive and not a zombie, same
# start time as recorded), else fails. A recycled PID is never taken for ours.
pid_of() {
    local name=$1 pid start state
    [ -s "$STATE/$name.pid" ] && [ -s "$STATE/$name.start" ] || return 1
    pid=$(<"$STATE/$name.pid") start=$(<"$STATE/$name.start")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(proc_field "$pid" 3) || return 1
    [ "$state" != Z ] && [ "$state" != X ] || return 1
    [ "$(proc_field "$pid" 22)" = "$start" ] || return 1
    printf '%s' "$pid"
}

# listening PORT [PID]: something (PID, when given) listens on TCP PORT.
listening() {
    local out
    out=$(ss -Hltnp "sport = :$1" 2>/dev/null) || return 1
    [ -n "$out" ] || return 1
    [ -z "${2:-}" ] || grep -q "pid=$2," <<<"$out"
}

check_port_var() { # NAME VALUE
    if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 65535 ]; then
        die "$1=$2 is not a port number (1-65535)"
    fi
}

# ports_free PORT...: fails with who holds the port and which knob moves it.
ports_free() {
    local p
    for p in "$@"; do
        if listening "$p"; then
            say "run.sh: ERROR: port $p is already in use (not by this stack):" >&2
            ss -Hltnp "sport = :$p" >&2 || true
            die "stop that process, or move the stack with MG_LOCAL_HTTP_PORT, MG_LOCAL_TLS_PORT, MG_LOCAL_POD_A_PORT, MG_LOCAL_POD_B_PORT, MG_LOCAL_POD_C_PORT, MG_LOCAL_ADMIN_PORT, MG_LOCAL_MARIADB_PORT, MG_LOCAL_REDIS_PORT"
        fi
    done
}

# spawn NAME PORTS CMD...: runs CMD in the background in its own session (setsid: it survives this
# script, its terminal and its process group), cwd .run/local, stdin /dev/null, stdout and stderr
# to .run/local/NAME.log, and no other descriptor of ours or our caller's (a daemon that keeps a
# caller's pipe open makes that caller wait forever). The child writes its own PID before it
# execs CMD, so the PID file holds the real process whatever setsid does; its start time goes
# beside it.
spawn() {
    local name=$1 ports=$2 log=$STATE/$1.log pidf=$STATE/$1.pid
    shift 2
    rm -f "$pidf" "$STATE/$name.start" "$STATE/$name.ports"
    [ ! -e "$log" ] || mv -f "$log" "$log.prev"
    { printf '%s run.sh: starting %s:' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name"
      printf ' %q' "$@"; printf '\n'; } >"$log"
    # The inner bash closes every fd above 2 (among them the lock, fd 9, which would otherwise
    # lock out the next run.sh), records its PID and becomes CMD.
    # shellcheck disable=SC2016 # $$, $0 and $fd are for the inner bash
    (cd "$STATE" && exec setsid -f bash -c '
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}
            [ "$fd" -le 2 ] || eval "exec $fd>&-"
        done
        echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' \
        "$pidf" "$@" </dev/null >>"$log" 2>&1)
    local deadline=$((SECONDS + 5))
    while [ ! -s "$pidf" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { log_tail "$name"; die "$name: no PID file after 5 s"; }
        sleep 0.02
    done
    local pid start
    pid=$(<"$pidf")
    if ! start=$(proc_field "$pid" 22); then
        log_tail "$name"; die "$name exited at once (pid $pid)"
    fi
    printf '%s\n' "$start" >"$STATE/$name.start"
    printf '%s\n' "$ports" >"$STATE/$name.ports"
}

# wait_ports NAME PORT...: polls until NAME's process listens on every PORT; fails with its log
# tail if it exits or START_TIMEOUT passes first.
wait_ports() {
    local name=$1 pid p deadline=$((SECONDS + START_TIMEOUT))
    shift
    pid=$(<"$STATE/$name.pid")
    for p in "$@"; do
        until listening "$p" "$pid"; do
            if ! pid_of "$name" >/dev/null; then
                log_tail "$name"
                die "$name (pid $pid) exited before listening on port $p"
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                log_tail "$name"
                die "$name (pid $pid) is not listening on port $p after ${START_TIMEOUT} s (MG_LOCAL_START_TIMEOUT)"
            fi
            sleep 0.1
        done
    done
}

# stop_component NAME: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL. Quiet when not running.
stop_component() {
    local name=$1 pid deadline
    if pid=$(pid_of "$name"); then
        step "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while pid_of "$name" >/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                step "$name (pid $pid) still running after ${STOP_TIMEOUT} s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                deadline=$((SECONDS + 5))
                while pid_of "$name" >/dev/null; do
                    [ "$SECONDS" -lt "$deadline" ] || die "$name (pid $pid) survives SIGKILL"
                    sleep 0.1
                done
                break
            fi
            sleep 0.1
        done
    elif [ -e "$STATE/$name.pid" ]; then
        step "$name: stale PID file (process gone), removed"
    fi
    rm -f "$STATE/$name.pid" "$STATE/$name.start" "$STATE/$name.ports"
}

# All components, in reverse start order, then any PID file left by a component no longer listed.
stop_stack() {
    local i f name
    [ -d "$STATE" ] || return 0
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        stop_component "${COMPONENTS[i]}"
    done
    for f in "$STATE"/*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid)
        stop_component "$name"
    done
}

lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 120 9 || die "another run.sh holds $(rel "$STATE")/.lock for over 2 minutes"
}

# ---------------------------------------------------------------- start steps
install_deps() {
    if [ "${MG_LOCAL_SKIP_DEPS:-0}" = 1 ]; then
        step "MG_LOCAL_SKIP_DEPS=1: not checking Debian packages"
        return 0
    fi
    "$ROOT/scripts/install-deps.sh" || die "scripts/install-deps.sh failed (see above)"
}

build() {
    if [ "${MG_LOCAL_SKIP_BUILD:-0}" = 1 ]; then
        step "MG_LOCAL_SKIP_BUILD=1: using $(rel "$GATEWAY_BIN") and $(rel "$RUNTIME_BIN") as they are"
    else
        step "building modelgate and modelgate-runtime (RelWithDebInfo; output in $(rel "$STATE")/build.log)"
        if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
               cmake --build "$BUILD_DIR" --target modelgate modelgate-runtime -j "$(nproc)"; } >"$STATE/build.log" 2>&1; then
            say "----- last lines of $(rel "$STATE")/build.log -----" >&2
            tail -n 30 "$STATE/build.log" >&2
            die "build failed"
        fi
    fi
    [ -x "$GATEWAY_BIN" ] || die "$(rel "$GATEWAY_BIN") does not exist"
    [ -x "$RUNTIME_BIN" ] || die "$(rel "$RUNTIME_BIN") does not exist"
}

# The demo model: XGBoost trained on scikit-learn's 8x8 digits (a few seconds, once), a model
# descriptor the pods watch, and one real input to try. Switching models = editing digits.json
# (e.g. "file": "xgb_digits.ubj", "version": "2"): the pods load it beside the old one and swap.
demo_model() {
    local m=$STATE/models
    if [ ! -s "$m/expected.json" ] || [ "$TRAIN_PY" -nt "$m/expected.json" ]; then
        step "training the demo model (digits, XGBoost; output in $(rel "$STATE")/train.log)"
        mkdir -p "$m"
        "$PY" "$TRAIN_PY" "$m" >"$STATE/train.log" 2>&1 ||
            { tail -n 20 "$STATE/train.log" >&2; die "training the demo model failed"; }
    fi
    [ -s "$m/digits.json" ] || write_file "$m/digits.json" '{
  "file": "xgb_digits.json",
  "kind": "xgboost",
  "name": "digits",
  "version": "1"
}'
    [ -s "$m/digits-v2.json" ] || write_file "$m/digits-v2.json" '{
  "file": "linear_multinomial.json",
  "kind": "linear",
  "name": "digits",
  "version": "2"
}'
    "$PY" -c 'import json,sys
from sklearn.datasets import load_digits
d = load_digits()
json.dump({"input": d.data[7].tolist()}, open(sys.argv[1], "w"))' "$STATE/digit.json" ||
        die "cannot write the example input"
}

make_tls() {
    "$ROOT/conf/gen-test-certs.sh" "$STATE/tls" >"$STATE/tls.log" 2>&1 ||
        { cat "$STATE/tls.log" >&2; die "conf/gen-test-certs.sh failed"; }
}

# Written beside each other; write_file goes through a temp file so a reload never reads half a file.
write_file() { # PATH CONTENT
    printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"
}

write_config() {
    write_file "$STATE/routes.json" "{
  \"domain\": \"$DOMAIN\",
  \"envs\": [\"development\", \"staging\", \"sandbox\", \"production\"],
  \"services\": {
    \"$SERVICE\": {
      \"protocol\": \"h2c\",
      \"pods\": [\"$HOST:$POD_A_PORT\", \"$HOST:$POD_B_PORT\"],
      \"health_check\": { \"path\": \"/readyz\", \"interval_ms\": 1000 }
    },
    \"$SERVICE_V2\": {
      \"protocol\": \"h2c\",
      \"pods\": [\"$HOST:$POD_C_PORT\"],
      \"health_check\": { \"path\": \"/readyz\", \"interval_ms\": 1000 }
    }
  },
  \"routes\": [
    { \"app\": \"$APP\", \"env\": \"$ENV\",
      \"split\": [ { \"service\": \"$SERVICE\", \"weight\": 90 },
                 { \"service\": \"$SERVICE_V2\", \"weight\": 10 } ],
      \"sticky_header\": \"x-user-id\", \"retry_post\": true }
  ]
}"
    # Relative paths are relative to this file's directory (conf/README.md).
    write_file "$STATE/gateway.json" "{
  \"listen\": [\"$HOST:$HTTP_PORT\"],
  \"tls\": {
    \"listen\": [\"$HOST:$TLS_PORT\"],
    \"cert\": \"tls/cert.pem\",
    \"key\": \"tls/key.pem\"
  },
  \"workers\": $WORKERS,
  \"routes\": \"routes.json\",
  \"access_log\": \"access.log\",
  \"log_level\": \"info\",
  \"admin\": { \"listen\": \"$HOST:$ADMIN_PORT\" },
  \"timeouts_ms\": { \"drain\": $DRAIN_MS },
  \"request_log_db\": { \"host\": \"$HOST\", \"port\": $MARIADB_PORT, \"user\": \"root\",
                      \"database\": \"modelgate\", \"spool_dir\": \"spool\" },
  \"features\": {
    \"redis\": { \"host\": \"$HOST\", \"port\": $REDIS_PORT },
    \"mariadb\": { \"host\": \"$HOST\", \"port\": $MARIADB_PORT, \"user\": \"root\",
                 \"database\": \"modelgate\" },
    \"apps\": {
      \"$APP\": { \"timeout_ms\": 5,
                 \"groups\": [ { \"name\": \"profile\", \"type\": \"hash\" },
                             { \"name\": \"recent\", \"type\": \"list\", \"max_items\": 50 } ] }
    }
  }
}"
    local out
    if ! out=$("$GATEWAY_BIN" --check-config "$STATE/gateway.json" 2>&1); then
        say "$out" >&2
        die "the generated $(rel "$STATE")/gateway.json is invalid"
    fi
}

# MariaDB (the request log, the features' source of truth) and Redis (the features' cache), each
# with its data under .run/local/, on loopback, on ports of their own: never the machine's own.
MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
sql() { mariadb --no-defaults -h "$HOST" -P "$MARIADB_PORT" -u root --connect-timeout=2 "$@"; }

start_mariadb() {
    local d=$STATE/mariadb user=()
    [ "$(id -u)" = 0 ] && user=(--user=root) # mariadbd refuses to run as root without it
    if [ ! -d "$d/data/mysql" ]; then
        step "creating the MariaDB data directory (output in $(rel "$STATE")/mariadb-install.log)"
        mkdir -p "$d"
        mariadb-install-db --no-defaults --datadir="$d/data" --auth-root-authentication-method=normal \
            --skip-test-db "${user[@]}" --skip-name-resolve >"$STATE/mariadb-install.log" 2>&1 ||
            { tail -n 20 "$STATE/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    spawn mariadb "$MARIADB_PORT" "$MARIADBD" --no-defaults --datadir="$d/data" \
        --socket="$d/mysqld.sock" --port="$MARIADB_PORT" --bind-address="$HOST" "${user[@]}" \
        --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=64M \
        --pid-file="$d/mysqld.pid"
    wait_ports mariadb "$MARIADB_PORT"
    local deadline=$((SECONDS + START_TIMEOUT))
    until sql -e 'SELECT 1' >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log_tail mariadb; die "MariaDB does not answer on $HOST:$MARIADB_PORT"; }
        sleep 0.2
    done
    sql -e 'CREATE DATABASE IF NOT EXISTS modelgate' || die "cannot create the modelgate database"
}

start_redis() {
    mkdir -p "$STATE/redis"
    spawn redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind "$HOST" --dir "$STATE/redis" \
        --save "" --appendonly no --protected-mode yes --daemonize no
    wait_ports redis "$REDIS_PORT"
}

# A few users' features, through the gateway's admin API (MariaDB, then Redis).
demo_features() {
    local out
    out=$(curl -sS --max-time 10 -X POST --data-binary @- "http://$HOST:$ADMIN_PORT/v1/features/$APP" <<'JSONL'
{"user": "alice", "features": {"profile": {"country": "fr", "plan": "pro"}, "recent": ["7", "1", "7"]}}
{"user": "bob", "features": {"profile": {"country": "de", "plan": "free"}, "recent": ["3"]}}
{"user": "carol", "features": {"profile": {"country": "jp", "plan": "pro"}, "recent": ["0", "8", "8", "2"]}}
JSONL
) || die "loading the demo features failed: $out"
    case $out in *'"accepted":3'*) ;; *) die "loading the demo features: $out" ;; esac
    step "demo features loaded for alice, bob, carol (MariaDB table user_features, Redis mgf:v1:$APP:*)"
}

pod_port() { case $1 in pod-a) echo "$POD_A_PORT" ;; pod-b) echo "$POD_B_PORT" ;; *) echo "$POD_C_PORT" ;; esac; }

start_pods() {
    local name port model service
    for name in pod-a pod-b pod-c; do
        port=$(pod_port "$name") model=digits.json service=$SERVICE
        [ "$name" != pod-c ] || model=digits-v2.json service=$SERVICE_V2
        spawn "$name" "$port" env OPENBLAS_NUM_THREADS=1 "$RUNTIME_BIN" --listen "$HOST:$port" \
            --model "$STATE/models/$model" --service "$service" --threads 1
    done
    for name in pod-a pod-b pod-c; do
        port=$(pod_port "$name")
        wait_ports "$name" "$port"
        wait_ready "$name" "$port"
    done
}

# A pod listens at once but serves only once its model is loaded and warm (/readyz).
wait_ready() { # NAME PORT
    local deadline=$((SECONDS + START_TIMEOUT))
    until curl -sf --max-time 2 "http://$HOST:$2/readyz" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log_tail "$1"
            die "$1 has no model loaded after ${START_TIMEOUT}s (see its log above)"
        fi
        sleep 0.1
    done
}

start_gateway() {
    spawn gateway "$HTTP_PORT $TLS_PORT $ADMIN_PORT" "$GATEWAY_BIN" --config "$STATE/gateway.json"
    wait_ports gateway "$HTTP_PORT" "$TLS_PORT" "$ADMIN_PORT"
    # pods take traffic after their first passing health check
    local deadline=$((SECONDS + START_TIMEOUT))
    until [ "$(curl -s --max-time 2 "http://$HOST:$ADMIN_PORT/metrics" | grep -c '^modelgate_pod_healthy{.*} 1$')" -ge 3 ]; do
        [ $SECONDS -lt $deadline ] || { log_tail gateway; die "the gateway sees no healthy pods after ${START_TIMEOUT}s"; }
        sleep 0.1
    done
}

# One real prediction over each listener; prints the answer and which model version gave it.
smoke_test() {
    local out code body got url
    for url in "http://$HOST:$HTTP_PORT" "https://$VHOST:$TLS_PORT"; do
        local args=(-sS --max-time 10 -o "$STATE/smoke.out" -w '%{http_code} %{http_version}'
                    -H 'content-type: application/json' -d "@$STATE/digit.json")
        case $url in
        http:*) args+=(--http2-prior-knowledge -H "host: $VHOST") ;;
        https:*) args+=(--cacert "$STATE/tls/cert.pem" --resolve "$VHOST:$TLS_PORT:$HOST") ;;
        esac
        if ! out=$(curl "${args[@]}" "$url/v1/predict" 2>&1); then
            log_tail gateway
            die "request to $url/v1/predict failed: $out"
        fi
        code=${out%% *}
        body=$(cat "$STATE/smoke.out")
        if [ "$code" != 200 ]; then
            log_tail gateway
            die "request to $url/v1/predict answered $code, expected 200: $body"
        fi
        got=$("$PY" -c 'import json,sys; d=json.load(sys.stdin); print("digit %s (p=%.3f), model %s v%s" % (d["output"], d["score"], d["model"]["name"], d["model"]["version"]))' <<<"$body" 2>/dev/null) ||
            die "request to $url/v1/predict: the answer is not a prediction: $body"
        step "prediction OK: POST $url/v1/predict (HTTP/${out#* }) -> $got"
    done
    rm -f "$STATE/smoke.out"
}

# ---------------------------------------------------------------- commands
# shellcheck disable=SC2317 # called through trap
on_start_failure() {
    local rc=$?
    [ "$rc" -ne 0 ] || return 0
    say "run.sh: start failed; stopping what was started" >&2
    stop_stack >&2 || true
    exit "$rc"
}

cmd_start() {
    check_port_var MG_LOCAL_HTTP_PORT "$HTTP_PORT"
    check_port_var MG_LOCAL_TLS_PORT "$TLS_PORT"
    check_port_var MG_LOCAL_POD_A_PORT "$POD_A_PORT"
    check_port_var MG_LOCAL_POD_B_PORT "$POD_B_PORT"
    check_port_var MG_LOCAL_POD_C_PORT "$POD_C_PORT"
    check_port_var MG_LOCAL_ADMIN_PORT "$ADMIN_PORT"
    check_port_var MG_LOCAL_MARIADB_PORT "$MARIADB_PORT"
    check_port_var MG_LOCAL_REDIS_PORT "$REDIS_PORT"
    [ "$(printf '%s\n' "$HTTP_PORT" "$TLS_PORT" "$POD_A_PORT" "$POD_B_PORT" "$POD_C_PORT" "$ADMIN_PORT" "$MARIADB_PORT" "$REDIS_PORT" | sort -u | wc -l)" = 8 ] ||
        die "the eight ports must differ: $HTTP_PORT $TLS_PORT $POD_A_PORT $POD_B_PORT $POD_C_PORT $ADMIN_PORT $MARIADB_PORT $REDIS_PORT"
    [[ $WORKERS =~ ^[0-9]+$ ]] || die "MG_LOCAL_WORKERS=$WORKERS is not a number"
    [[ $START_TIMEOUT =~ ^[0-9]+$ ]] || die "MG_LOCAL_START_TIMEOUT=$START_TIMEOUT is not a number"

    grep -qx '\.run/' "$ROOT/.gitignore" 2>/dev/null ||
        step "warning: .gitignore has no '.run/' line; $(rel "$STATE") may show up in git status"

    # Deps and build first: a failed build leaves a running stack alone.
    install_deps
    lock
    build
    make_tls
    demo_model
    write_config

    stop_stack
    ports_free "$MARIADB_PORT" "$REDIS_PORT" "$POD_A_PORT" "$POD_B_PORT" "$POD_C_PORT" "$HTTP_PORT" "$TLS_PORT" "$ADMIN_PORT"
    # From here a failure stops what was started, so no half stack is left behind.
    trap on_start_failure EXIT
    step "starting MariaDB ($HOST:$MARIADB_PORT) and Redis ($HOST:$REDIS_PORT)"
    start_mariadb
    start_redis
    step "starting pod-a, pod-b (model v1), pod-c (model v2)"
    start_pods
    step "starting gateway"
    start_gateway
    demo_features
    smoke_test
    trap - EXIT

    print_summary
}

print_summary() {
    local s=$STATE
    cat <<EOF

Modelgate local stack is running (state in $s):
  pod-a    pid $(pid_of pod-a)   $HOST:$POD_A_PORT   modelgate-runtime, digits model v1 (XGBoost), log $s/pod-a.log
  pod-b    pid $(pid_of pod-b)   $HOST:$POD_B_PORT   modelgate-runtime, digits model v1 (XGBoost), log $s/pod-b.log
  pod-c    pid $(pid_of pod-c)   $HOST:$POD_C_PORT   modelgate-runtime, digits model v2 (logistic regression), log $s/pod-c.log
  gateway  pid $(pid_of gateway)   $HOST:$HTTP_PORT (h2c + HTTP/1.1), $HOST:$TLS_PORT (TLS), admin $HOST:$ADMIN_PORT, log $s/gateway.log
  mariadb  pid $(pid_of mariadb)   $HOST:$MARIADB_PORT   request log (table modelgate.request_log), features (modelgate.user_features)
  redis    pid $(pid_of redis)   $HOST:$REDIS_PORT   features cache
  route    $VHOST -> 90% $SERVICE (pod-a, pod-b), 10% $SERVICE_V2 (pod-c),
           sticky per x-user-id

Try it (a real 8x8 digit image, 64 numbers, in $s/digit.json):
  curl --http2-prior-knowledge -H 'host: $VHOST' http://$HOST:$HTTP_PORT/v1/predict -d @$s/digit.json
  curl --cacert $s/tls/cert.pem --resolve $VHOST:$TLS_PORT:$HOST https://$VHOST:$TLS_PORT/v1/predict -d @$s/digit.json
  curl http://$HOST:$POD_A_PORT/v1/status        # a pod: which model it serves
Watch the 90/10 canary split (the x-modelgate-service response header says who answered):
  for i in \$(seq 200); do curl -s -o /dev/null -w '%header{x-modelgate-service}\\n' -H 'host: $VHOST' \\
      http://$HOST:$HTTP_PORT/v1/predict -d @$s/digit.json; done | sort | uniq -c
  curl -s http://$HOST:$ADMIN_PORT/metrics | grep '^modelgate_service_requests_total.*2xx'
  curl -s -H 'x-user-id: alice' -H 'host: $VHOST' http://$HOST:$HTTP_PORT/v1/predict -d @$s/digit.json
                                                  # one user always gets the same version
A user's features go to the pod with the request (x-user-features); every request becomes a row:
  curl -s -H 'x-user-id: alice' -H 'host: $VHOST' --http2-prior-knowledge http://$HOST:$HTTP_PORT/v1/predict -d @$s/digit.json
  mariadb --no-defaults -h $HOST -P $MARIADB_PORT -u root modelgate -e \\
    "SELECT time, HEX(id), service, pod, status, features, features_hash FROM request_log ORDER BY time DESC LIMIT 3"
  curl -s http://$HOST:$ADMIN_PORT/v1/features/$APP/alice   # alice's features (admin API)
Change the weights: edit "weight" in $s/routes.json, then $0 reload (no request is dropped).
Switch a model in-process: edit $s/models/digits.json (e.g. "file": "xgb_digits.ubj",
"version": "3"); pod-a and pod-b load it beside the old one and swap without dropping a request.

Logs:     $s/gateway.log  $s/pod-a.log  $s/pod-b.log  $s/pod-c.log  $s/mariadb.log  $s/redis.log
Requests: $s/access.log (one JSON line per request)
Config:   $s/gateway.json, $s/routes.json (rewritten on every start; after editing routes.json: $0 reload)
Status:   $0 status
Stop:     $0 stop
EOF
}

cmd_stop() {
    lock
    stop_stack
    step "stopped"
}

# exit 0: every component runs; 3: none runs; 1: some run, some do not.
cmd_status() {
    local name pid ports p up=0 down=0 note
    for name in "${COMPONENTS[@]}"; do
        if pid=$(pid_of "$name"); then
            ports=$(cat "$STATE/$name.ports" 2>/dev/null || true)
            note=''
            for p in $ports; do
                if listening "$p" "$pid"; then note+=" $HOST:$p"; else note+=" $HOST:$p(NOT LISTENING)"; fi
            done
            printf '%-8s running  pid %-7s%s\n' "$name" "$pid" "$note"
            up=$((up + 1))
        else
            printf '%-8s stopped\n' "$name"
            down=$((down + 1))
        fi
    done
    if [ "$down" = 0 ]; then
        say "all ${#COMPONENTS[@]} components running; logs in $STATE"
        return 0
    elif [ "$up" = 0 ]; then
        say "the local stack is not running (start it: $0)"
        return 3
    fi
    say "the local stack is only partly running; restart it: $0"
    return 1
}

cmd_reload() {
    local pid
    pid=$(pid_of gateway) || die "the gateway is not running (start the stack: $0)"
    kill -HUP "$pid"
    step "sent SIGHUP to the gateway (pid $pid); it re-reads $(rel "$STATE")/routes.json (result in $(rel "$STATE")/gateway.log)"
}

usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case ${1:-start} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
reload) cmd_reload ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
