#!/usr/bin/env bash
# bench/dblog.sh - what the request log in MariaDB costs: modelgate with the access log only
# against the access log + request_log_db (a private mariadbd on 127.0.0.1), the same routing
# document, the same backend, interleaved rounds; then checks that every request the "db"
# gateway served became a row. See bench/README.md ("Request log in MariaDB").
#
#   bench/dblog.sh                    3 interleaved rounds of 10 s thr runs + lat runs (~3 min)
#   QUICK=1 bench/dblog.sh            smoke run: 1 round, 3 s runs
#   SPOOL_DIR=/var/tmp/x bench/dblog.sh   the spool on a real disk (default: the work dir in
#                                     /dev/shm, where fsync costs nothing)
#   PERF=1 bench/dblog.sh             then one thr run (PERF_PROFILE=rate: a rate run) per
#                                     gateway under perf record: its CPU by
#                                     thread (worker, access-log writer, database thread), and
#                                     mariadbd's during the db run
#
# mariadbd gets a fresh datadir in the work dir (mariadb-install-db --no-defaults, root without
# password, TCP on 127.0.0.1 only, no binary log). Every server runs in its own session, every
# h2load run is capped by `timeout`, and everything is stopped and removed on exit (KEEP=1
# keeps the dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3

# ---------------------------------------------------------------- knobs (environment)
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_dur=3 d_lat="-n 2000 -c 1 -m 1 -t 1" d_warm=1
else
    d_rounds=3 d_dur=10 d_lat="-n 10000 -c 1 -m 1 -t 1" d_warm=2
fi
ROUNDS=${ROUNDS:-$d_rounds}
DURATION=${DURATION:-$d_dur}
WARM_DURATION=${WARM_DURATION:-$d_warm}
THR_ARGS=${THR_ARGS:--c 50 -m 10 -t 1} # thr: one h2load, 500 streams in flight (as bench/run.sh)
# rate: the same at a fixed 15k req/s (h2load --rps per client), below what either gateway can
# do, so both wake as often and the CPU per request compares what the request log costs. A run
# that does not reach 97% of the rate is marked "short" (its CPU per request is not comparable:
# at 50k the db gateway fell short on a slow day, because mariadbd filled h2load's CPU). At 30k,
# the former default, the db run's CPU 0 (h2load, the pod and mariadbd) was nearly full: its
# p50 went from 5.8 to 9.2 ms, the gateway read more requests per wake-up, and its CPU per
# request looked lower than without the log (0.973)
RATE_ARGS=${RATE_ARGS:--c 50 -m 10 -t 1 --rps 300}
LAT_ARGS=${LAT_ARGS:-$d_lat}
PROFILES=${PROFILES:-thr rate lat}
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
MARIADBD=${MARIADBD:-$(command -v mariadbd || echo /usr/sbin/mariadbd)}
SPOOL_DIR=${SPOOL_DIR:-}               # default: $W/spool
BATCH_ROWS=${BATCH_ROWS:-500}          # request_log_db.batch_rows (its default)
FLUSH_MS=${FLUSH_MS:-200}              # request_log_db.flush_ms (its default)
INNODB_OPTS=${INNODB_OPTS:---innodb-buffer-pool-size=64M --innodb-log-file-size=32M}
PORT_BASE=${PORT_BASE:-19300}          # backend +1, mariadbd +2, gateways +3 +4, admin +5 +6
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-30}
NOISY_PCT=${NOISY_PCT:-10}
PERF=${PERF:-0}
PERF_PROFILE=${PERF_PROFILE:-thr}
# CPU layout, as bench/run.sh: thr gives the gateway (and so its log threads) a core of its
# own, h2load, the backend and mariadbd share the other; lat runs everything on one core.
if [ "$(nproc)" -ge 2 ] && [ "${PIN:-1}" = 1 ]; then
    THR_LOADGEN=${THR_LOADGEN-0} THR_GATEWAY=${THR_GATEWAY-1} THR_BACKEND=${THR_BACKEND-0}
    LAT_LOADGEN=${LAT_LOADGEN-1} LAT_GATEWAY=${LAT_GATEWAY-1} LAT_BACKEND=${LAT_BACKEND-1}
else
    THR_LOADGEN='' THR_GATEWAY='' THR_BACKEND='' LAT_LOADGEN='' LAT_GATEWAY='' LAT_BACKEND=''
fi
RUN_TIMEOUT=${RUN_TIMEOUT:-$((DURATION + 60))}
HOST=bench-production.modelgate.local
BE_PORT=$((PORT_BASE + 1)) DB_PORT=$((PORT_BASE + 2))
GWS="log db"
declare -A GW_PORT=([log]=$((PORT_BASE + 3)) [db]=$((PORT_BASE + 4)))
declare -A ADMIN_PORT=([log]=$((PORT_BASE + 5)) [db]=$((PORT_BASE + 6)))
LOADGEN_CPUS=

# ---------------------------------------------------------------- plumbing
# say die start stop wait_port sess_ticks others_ticks our_sids wait_quiet pct need_tools, SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-dbbench
[ -n "$SPOOL_DIR" ] || SPOOL_DIR=$W/spool

sql() { mariadb --no-defaults -h 127.0.0.1 -P "$DB_PORT" -u root -N -B -e "$1" 2>&1; }

write_files() {
    local gw dbconf
    mkdir -p "$W/htdocs/v1" "$SPOOL_DIR"
    printf '%s\n' '{"prediction":7,"probabilities":[0.01,0.02,0.9],"model_version":"digits-v3","ms":0.2}' \
        >"$W/htdocs/v1/predict"
    printf '%s' '{"inputs":[[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3]]}' >"$W/body.json"
    for gw in $GWS; do
        mkdir -p "$W/$gw"
        cat >"$W/$gw/routes.json" <<JSON
{"domain": "modelgate.local", "services": {"svc": {"protocol": "h2c", "pods": ["127.0.0.1:$BE_PORT"]}},
 "routes": [{"app": "bench", "env": "production", "service": "svc"}]}
JSON
        dbconf=
        [ "$gw" = db ] && dbconf=',
 "request_log_db": {"host": "127.0.0.1", "port": '$DB_PORT', "user": "root", "database": "modelgate",
   "spool_dir": "'$SPOOL_DIR'", "batch_rows": '$BATCH_ROWS', "flush_ms": '$FLUSH_MS'}'
        cat >"$W/$gw/gateway.json" <<JSON
{"listen": ["127.0.0.1:${GW_PORT[$gw]}"], "workers": 1, "routes": "routes.json",
 "access_log": "$W/$gw/access.log", "log_level": "warn",
 "admin": {"listen": "127.0.0.1:${ADMIN_PORT[$gw]}"}$dbconf}
JSON
    done
}

start_mariadb() {
    local d=$W/mariadb u=()
    mkdir -p "$d"
    [ "$(id -u)" = 0 ] && u=(--user=root)
    mariadb-install-db --no-defaults --datadir="$d/data" --auth-root-authentication-method=normal \
        --skip-test-db "${u[@]}" --skip-name-resolve >"$d/install.out" 2>&1 ||
        die "mariadb-install-db failed: $(tail -5 "$d/install.out")"
    # shellcheck disable=SC2086 # INNODB_OPTS is a list of options
    start mariadb "$THR_BACKEND" "$MARIADBD" --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 "${u[@]}" --skip-name-resolve \
        $INNODB_OPTS --innodb-flush-log-at-trx-commit=2 \
        --pid-file="$d/mysqld.pid" --log-error="$d/error.log" --skip-log-bin
    wait_port "$DB_PORT" 60 mariadb || die "mariadbd did not start: $(tail -5 "$d/error.log")"
    for _ in $(seq 1 100); do sql 'SELECT 1' >/dev/null && return 0; sleep 0.1; done
    die "mariadbd does not answer: $(tail -5 "$d/error.log")"
}

# dbstats: "spooled inserted duplicates lost rejected" of the db gateway
dbstats() {
    curl -s --max-time 5 "http://127.0.0.1:${ADMIN_PORT[db]}/stats/dblog" | "$PY" -c '
import json, sys
try:
    d = json.load(sys.stdin)
    print(d["spooled"], d["inserted"], d["duplicates"], d["lost"], d["rejected"])
except Exception:
    print("- - - - -")'
}

sanity() {
    local body
    body=$(timeout 10 nghttp -d "$W/body.json" -H 'content-type: application/json' \
        -H ":authority: $HOST" "http://127.0.0.1:${GW_PORT[$1]}/v1/predict" 2>&1)
    [[ $body == *'"prediction":7'* ]] || die "gateway $1 does not forward POST /v1/predict: ${body:0:300}"
}

layout() { # the gateways on the gateway CPU, everything else (pods, mariadbd) beside h2load
    if [ "$1" != lat ]; then
        pin_sessions "$THR_LOADGEN" 'gw-*' "$THR_GATEWAY" "$THR_BACKEND"
    else
        pin_sessions "$LAT_LOADGEN" 'gw-*' "$LAT_GATEWAY" "$LAT_BACKEND"
    fi
}

# CPU ticks of the worker threads (mg-worker-*) of the gateway process $1: the rest of the
# process is the access-log writer and the database thread
worker_ticks() {
    local d files=()
    for d in /proc/"$1"/task/*; do
        [[ $(cat "$d/comm" 2>/dev/null) == mg-worker-* ]] && files+=("$d/stat")
    done
    stat_ticks "${files[@]}"
}

# rate_held RPS: whether a rate run reached 97% of what RATE_ARGS offers (-c times --rps)
rate_held() {
    local c r
    c=$(sed -n 's/.*-c \([0-9]*\).*/\1/p' <<<"$RATE_ARGS") r=$(sed -n 's/.*--rps \([0-9]*\).*/\1/p' <<<"$RATE_ARGS")
    [ -n "$c" ] && [ -n "$r" ] || return 0
    "$PY" -c "import sys; sys.exit(0 if $1 >= 0.97 * $c * $r else 1)"
}

# h2run GW PROFILE [DURATION]: one measured run; prints
# "rps ok total p50 p99 gw_us wk_us db_us foreign_pct status". wk_us: the worker threads' share
# of gw_us; db_us: mariadbd's CPU during the run
# per request (it inserts the db gateway's rows a little later: see the README)
h2run() {
    local gw=$1 prof=$2 dur=${3:-$DURATION} rc=0 args=$LAT_ARGS t0 t1 d0 d1 o0 o1 w0 w1
    [ "$prof" = thr ] && args="-D $dur $THR_ARGS"
    [ "$prof" = rate ] && args="-D $dur $RATE_ARGS"
    rm -f "$W/h2load.tsv" # h2load appends to its --log-file
    # shellcheck disable=SC2046
    o0=$(others_ticks $(our_sids)) t0=$(sess_ticks "${SID[gw-$gw]}") d0=$(sess_ticks "${SID[mariadb]}")
    k0=$(worker_ticks "${SID[gw-$gw]}")
    w0=$(date +%s%N)
    # shellcheck disable=SC2046,SC2086
    timeout -k 5 "$RUN_TIMEOUT" $(pin "$LOADGEN_CPUS") h2load $args -H ":authority: $HOST" \
        -H 'content-type: application/json' -d "$W/body.json" --log-file="$W/h2load.tsv" \
        "http://127.0.0.1:${GW_PORT[$gw]}/v1/predict" >"$W/h2load.out" 2>&1 || rc=$?
    w1=$(date +%s%N)
    # shellcheck disable=SC2046
    t1=$(sess_ticks "${SID[gw-$gw]}") d1=$(sess_ticks "${SID[mariadb]}") o1=$(others_ticks $(our_sids))
    k1=$(worker_ticks "${SID[gw-$gw]}")
    { echo "=== $gw $prof: h2load $args"; cat "$W/h2load.out"; } >>"$W/raw.txt"
    local rps ok total non2xx p50 p99 cnt status=ok gcpu kcpu dcpu foreign
    read -r rps ok total non2xx < <(awk '
        /^finished in/ { gsub(",", ""); rps += $4 }
        /^requests:/ { total += $2; for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) ok += $i }
        /^status codes:/ { bad += $5 + $7 + $9 }
        END { printf "%.2f %d %d %d\n", rps, ok, total, bad }' "$W/h2load.out")
    read -r p50 p99 cnt < <(pct "$W/h2load.tsv" 2>/dev/null || echo "- - 0")
    [ "$rc" = 0 ] && [ "$ok" -gt 0 ] && [ "$ok" = "$total" ] && [ "$non2xx" = 0 ] &&
        [ "$cnt" -ge "$ok" ] || status=bad
    kill -0 "${SID[gw-$gw]}" 2>/dev/null || status=died
    [ "$status" = bad ] && say "bench: $gw $prof: h2load exit $rc, $ok of $total ok, $non2xx non-2xx" >&2
    gcpu=- kcpu=- dcpu=-
    if [ "$ok" -gt 0 ]; then
        gcpu=$("$PY" -c "print(f'{$(((t1 - t0) * TICK_US))/$ok:.2f}')")
        kcpu=$("$PY" -c "print(f'{$(((k1 - k0) * TICK_US))/$ok:.2f}')")
        dcpu=$("$PY" -c "print(f'{$(((d1 - d0) * TICK_US))/$ok:.2f}')")
    fi
    foreign=$(((o1 - o0) * TICK_US * 100 / ((w1 - w0) / 1000 + 1)))
    [ "$status" = ok ] && [ "$foreign" -gt "$NOISY_PCT" ] && [ $((o1 - o0)) -gt 3 ] && status=noisy
    [ "$status" = ok ] && [ "$prof" = rate ] && ! rate_held "$rps" && status=short
    echo "$rps $ok $total $p50 $p99 $gcpu $kcpu $dcpu $foreign $status"
}

# perf_threads GW: one PERF_PROFILE run with `perf record -g` on that gateway and on mariadbd; prints the
# gateway's self time by thread, by thread and library, by thread and symbol, then mariadbd's
# top symbols (what the rows cost the server)
perf_threads() {
    local gw=$1 gpid dpid p
    gpid=${SID[gw-$gw]} # setsid execs the gateway (via taskset): it leads its session
    dpid=$(pgrep -s "${SID[mariadb]}" -x mariadbd | head -1)
    [ -n "$gpid" ] || return 0
    local pids=()
    [ "$gw" = db ] || dpid= # mariadbd works for the db gateway only
    for p in "gw:$gpid" "db:$dpid"; do
        [ -n "${p#*:}" ] || continue
        timeout -k 5 $((DURATION + 30)) perf record -q -g -p "${p#*:}" -o "$W/perf.${p%%:*}.data" \
            -- sleep "$DURATION" >"$W/perf.${p%%:*}.out" 2>&1 &
        pids+=($!)
    done
    sleep 0.2
    h2run "$gw" "$PERF_PROFILE" >/dev/null
    wait "${pids[@]}"
    say ""
    say "## perf: gateway '$gw', self time by thread, by thread and library, by thread and symbol"
    perf_top "$W/perf.gw.data" comm 8
    perf_top "$W/perf.gw.data" comm,dso 16
    perf_top "$W/perf.gw.data" comm,dso,symbol 60
    [ -n "$dpid" ] || return 0
    say ""
    say "## perf: mariadbd during that run, by library and symbol"
    perf_top "$W/perf.db.data" dso,symbol 30
}
perf_top() { # DATA SORT LINES
    timeout 120 perf report -q -i "$1" --no-children --sort "$2" --percent-limit 0.5 --stdio \
        -g none 2>/dev/null | grep -v '^$' | head -"$3"
}

# ---------------------------------------------------------------- run
need_tools h2load nghttp nghttpd mariadb mariadb-install-db "$MARIADBD" taskset timeout setsid pgrep ss curl "$PY"
[ "$PERF" = 1 ] && need_tools perf
[ -x "$MODELGATE_BIN" ] || die "$MODELGATE_BIN does not exist or is not executable; build it
       (cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build --target modelgate) or set MODELGATE_BIN"
for p in "$BE_PORT" "$DB_PORT" "${GW_PORT[@]}" "${ADMIN_PORT[@]}"; do
    ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set PORT_BASE to another range)"
done
write_files

say "# modelgate request log: access log only / access log + MariaDB, $(date -Is)"
say "# $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); $(h2load --version | head -1); $("$MARIADBD" --version | cut -d' ' -f2-4)"
say "# gateways (workers 1, $MODELGATE_BIN): log = access_log $W/log/access.log; db = the same + request_log_db (batch_rows $BATCH_ROWS, flush_ms $FLUSH_MS, spool $SPOOL_DIR)"
say "# thr: h2load -D $DURATION $THR_ARGS | rate: h2load -D $DURATION $RATE_ARGS | lat: h2load $LAT_ARGS | rounds: $ROUNDS"
say "# pinning thr and rate: h2load=[${THR_LOADGEN:-any}] gateway=[${THR_GATEWAY:-any}] backend+mariadbd=[${THR_BACKEND:-any}]; lat: all=[${LAT_GATEWAY:-any}]"

start backend "$THR_BACKEND" nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "$BE_PORT"
wait_port "$BE_PORT" 10 backend || die "nghttpd did not start: $(tail -5 "$W/backend.out")"
start_mariadb
for gw in $GWS; do
    timeout 20 "$MODELGATE_BIN" --check-config "$W/$gw/gateway.json" >"$W/$gw/check.out" 2>&1 ||
        die "the generated config for $gw is refused: $(cat "$W/$gw/check.out")"
    start "gw-$gw" "$THR_GATEWAY" "$MODELGATE_BIN" --config "$W/$gw/gateway.json"
    if ! wait_port "${GW_PORT[$gw]}" 10 "gw-$gw" || ! wait_port "${ADMIN_PORT[$gw]}" 10 "gw-$gw"; then
        die "gateway $gw did not listen within 10 s: $(tail -20 "$W/gw-$gw.out")"
    fi
    sanity "$gw"
done
for _ in $(seq 1 100); do # the table exists and the first record went in
    read -r _ ins _ < <(dbstats)
    [ "$ins" != - ] && [ "$ins" -ge 1 ] && break
    sleep 0.1
done
if [ "$ins" = - ] || [ "$ins" -lt 1 ]; then
    die "the db gateway inserts nothing: $(dbstats); $(tail -5 "$W/gw-db.out")"
fi

layout thr
for gw in $GWS; do h2run "$gw" thr "$WARM_DURATION" >/dev/null; done

printf 'round\tprofile\tgw\trps\tok\ttotal\tp50\tp99\tgw_us\twk_us\tdb_us\tforeign\tstatus\n' >"$W/runs.tsv"
say ""
say "round profile gw   req/s       ok/total           p50us  p99us  gw_us/req  worker_us  mariadbd_us/req  others%cpu  status"
for r in $(seq 1 "$ROUNDS"); do
    for prof in $PROFILES; do
        layout "$prof"
        for gw in $GWS; do
            for try in 0 1 2; do
                waited=$(wait_quiet)
                read -r rps ok total p50 p99 gcpu kcpu dcpu foreign status < <(h2run "$gw" "$prof")
                if [ "$status" != noisy ] || [ "$try" -ge 2 ]; then break; fi
                say "      $gw $prof: other processes used ${foreign}% of a CPU during the run (waited ${waited}s for quiet); retrying"
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$prof" "$gw" "$rps" "$ok" "$total" \
                "$p50" "$p99" "$gcpu" "$kcpu" "$dcpu" "$foreign" "$status" >>"$W/runs.tsv"
            say "$(printf '%-5s %-7s %-4s %-11s %-18s %6s %6s %10s %10s %16s %11s  %s' "$r" "$prof" "$gw" "$rps" \
                "$ok/$total" "$p50" "$p99" "$gcpu" "$kcpu" "$dcpu" "$foreign" "$status")"
            [ "$status" = died ] && die "gateway $gw exited during the run: $(tail -20 "$W/gw-$gw.out")"
        done
    done
done

if [ "$PERF" = 1 ]; then
    layout thr
    for gw in $GWS; do perf_threads "$gw"; done
fi

# every request of the db gateway must become a row: wait until the spool is drained
say ""
t0=$(date +%s%N) d0=$(sess_ticks "${SID[mariadb]}")
for _ in $(seq 1 600); do
    read -r sp ins dup lost rej < <(dbstats)
    [ "$sp" != - ] && [ $((ins + dup + lost + rej)) -ge "$sp" ] && break
    sleep 0.1
done
t1=$(date +%s%N) d1=$(sess_ticks "${SID[mariadb]}")
lines=$(wc -l <"$W/db/access.log")
rows=$(sql 'SELECT COUNT(*) FROM modelgate.request_log')
say "request log: $lines access-log records, $rows rows in modelgate.request_log; spooled $sp, inserted $ins," \
    "duplicates $dup, lost $lost, rejected $rej; drained $(((t1 - t0) / 1000000)) ms after the last run" \
    "(mariadbd $(((d1 - d0) * TICK_US / 1000)) ms CPU meanwhile)"
if [ "$rows" = "$lines" ] && [ "$lost" = 0 ] && [ "$rej" = 0 ]; then
    say "every request became a row: yes"
else
    say "every request became a row: NO"
fi
dbdir_kb=$(du -sk "$W/mariadb/data" | cut -f1)
say "mariadbd: total CPU $(($(sess_ticks "${SID[mariadb]}") * TICK_US / 1000)) ms over the whole script, datadir ${dbdir_kb} KiB"

say ""
say "## summary: medians over $ROUNDS round(s); ratios are medians of the per-round ratios (paired runs)"
PYTHONPATH="$HERE" "$PY" - "$W/runs.tsv" <<'PY'
import csv, statistics, sys

from tsv import read_rows, num, med, fmt as f

rows = read_rows(sys.argv[1])
by = {}
for r in rows:
    by.setdefault((r["profile"], r["gw"]), []).append(r)
print("gw    thr req/s          min-max  p50/p99 us   gw us/req  mariadbd us/req  rate gw us/req   lat p50/p99 us  not ok")
for gw in ("log", "db"):
    t, l, rt = by.get(("thr", gw), []), by.get(("lat", gw), []), by.get(("rate", gw), [])
    rps = [num(r["rps"]) for r in t]
    bad = sum(r["status"] != "ok" for r in t + l + rt)
    print(f"{gw:<4} {f(med(rps), ',.0f'):>10} {f(min(rps, default=None), ',.0f'):>9}-{f(max(rps, default=None), ',.0f'):<8}"
          f" {f(med([num(r['p50']) for r in t]), '.0f'):>5}/{f(med([num(r['p99']) for r in t]), '.0f'):<6}"
          f" {f(med([num(r['gw_us']) for r in t]), '.2f'):>9} {f(med([num(r['db_us']) for r in t]), '.2f'):>16}"
          f" {f(med([num(r['gw_us']) for r in rt]), '.2f'):>15}"
          f" {f(med([num(r['p50']) for r in l]), '.0f'):>8}/{f(med([num(r['p99']) for r in l]), '.0f'):<6} {bad}")
def per_round(prof, gw, col):
    # a rate run that fell short of the rate woke less often: its CPU per request compares nothing
    return {r["round"]: num(r[col]) for r in by.get((prof, gw), []) if r["status"] != "short"}
def ratio(prof, col):
    a, b = per_round(prof, "db", col), per_round(prof, "log", col)
    return [a[k] / b[k] for k in a if a[k] and b.get(k)]
rr, cr, kr = ratio("thr", "rps"), ratio("thr", "gw_us"), ratio("rate", "gw_us")
wr = ratio("rate", "wk_us")
dp = [per_round("lat", "db", "p50")[k] - v for k, v in per_round("lat", "log", "p50").items()
      if v is not None and per_round("lat", "db", "p50").get(k) is not None]
print(f"\ndb vs log: req/s {f(med(rr), '.3f')} (rounds: {' '.join(format(x, '.3f') for x in rr)}; target > 0.95),"
      f" gateway CPU/req {f(med(cr), '.3f')}, added lat p50 {f(med(dp), '.0f')} us")
# at the same offered rate both gateways wake as often: the CPU ratio is what the request log
# costs the gateway itself, and its inverse the throughput it keeps when MariaDB has a host of
# its own (in thr, mariadbd shares h2load's CPU and that CPU is the limit)
print(f"at a fixed rate: gateway CPU/req {f(med(kr), '.3f')} (rounds: {' '.join(format(x, '.3f') for x in kr)}),"
      f" so the gateway's own capacity with the request log: {f(1 / med(kr) if kr else None, '.3f')} of without")
# the worker threads alone: what the request log does to the request path (the rest of the
# difference is the access-log writer and the database thread)
print(f"at a fixed rate, worker threads only: CPU/req {f(med(wr), '.3f')} (rounds: {' '.join(format(x, '.3f') for x in wr)})")
PY
