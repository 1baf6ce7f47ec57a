#!/usr/bin/env bash
# bench/dbdrain.sh - what the request log's database thread costs per row: modelgate replays a
# spool of N access-log records into a private mariadbd (fresh datadir, 127.0.0.1 only) at
# start, and the script reads that thread's CPU time once every record is a row. No client
# traffic and no worker in the picture, so the figure moves far less than a loaded run's
# (bench/dblog.sh), and a change to the database path can be compared build against build.
#
#   bench/dbdrain.sh                                  3 rounds of 400k records
#   BEFORE_BIN=/path/to/older/modelgate bench/dbdrain.sh   the same rounds, alternating builds
#   N=1000000 ROUNDS=5 PERF=1 bench/dbdrain.sh        perf record of the last round's thread
#
# The records are copies of one realistic line (bench/dblog.sh's shape), each with its own id
# and time. The gateway runs on CPU 1, mariadbd on CPU 0. Everything is stopped and removed on
# exit (KEEP=1 keeps the work dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3

N=${N:-400000}
ROUNDS=${ROUNDS:-3}
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
BEFORE_BIN=${BEFORE_BIN:-}
MARIADBD=${MARIADBD:-$(command -v mariadbd || echo /usr/sbin/mariadbd)}
INNODB_OPTS=${INNODB_OPTS:---innodb-buffer-pool-size=64M --innodb-log-file-size=32M}
PORT_BASE=${PORT_BASE:-19400} # mariadbd +1, gateway +2, admin +3
PERF=${PERF:-0}
DB_CPU=0 GW_CPU=1
[ "$(nproc)" -ge 2 ] || DB_CPU='' GW_CPU=''
DB_PORT=$((PORT_BASE + 1)) GW_PORT=$((PORT_BASE + 2)) ADMIN_PORT=$((PORT_BASE + 3))

# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-dbdrain

sql() { mariadb --no-defaults -h 127.0.0.1 -P "$DB_PORT" -u root -N -B -e "$1" 2>&1; }

start_mariadb() {
    local d=$W/mariadb u=()
    mkdir -p "$d"
    [ "$(id -u)" = 0 ] && u=(--user=root)
    mariadb-install-db --no-defaults --datadir="$d/data" --auth-root-authentication-method=normal \
        --skip-test-db "${u[@]}" --skip-name-resolve >"$d/install.out" 2>&1 ||
        die "mariadb-install-db failed: $(tail -5 "$d/install.out")"
    # shellcheck disable=SC2086 # INNODB_OPTS is a list of options
    start mariadb "$DB_CPU" "$MARIADBD" --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 "${u[@]}" --skip-name-resolve \
        $INNODB_OPTS --innodb-flush-log-at-trx-commit=2 \
        --pid-file="$d/mysqld.pid" --log-error="$d/error.log" --skip-log-bin
    wait_port "$DB_PORT" 60 mariadb || die "mariadbd did not start: $(tail -5 "$d/error.log")"
    for _ in $(seq 1 100); do sql 'SELECT 1' >/dev/null && return 0; sleep 0.1; done
    die "mariadbd does not answer: $(tail -5 "$d/error.log")"
}

# N records as the access log writes them, each with its own id and time
write_spool_source() {
    "$PY" - "$W/records" "$N" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
rec = {"time": "", "id": "", "request_id": "2b675fd307136ad382549fbfe4122405",
       "client": "127.0.0.1:46394", "proto": "h2c", "method": "POST",
       "host": "bench-production.modelgate.local", "path": "/v1/predict", "app": "bench",
       "env": "production", "service": "svc", "pod": "127.0.0.1:19301", "features": None,
       "features_hash": None, "status": 200, "req_bytes": 70, "resp_bytes": 86,
       "fallback": False, "retries": 0, "upstream_us": 367, "total_us": 398, "error": None}
with open(path, "w") as f:
    for i in range(n):
        rec["id"] = "%032x" % (0xabc << 80 | i)
        rec["time"] = "2026-11-26T12:%02d:%02d.%06dZ" % (i // 60000000 % 60, i // 1000000 % 60,
                                                         i % 1000000)
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
PY
    cat >"$W/routes.json" <<JSON
{"domain": "modelgate.local", "services": {"svc": {"protocol": "h2c", "pods": ["127.0.0.1:1"]}},
 "routes": [{"app": "bench", "env": "production", "service": "svc"}]}
JSON
    cat >"$W/gateway.json" <<JSON
{"listen": ["127.0.0.1:$GW_PORT"], "workers": 1, "routes": "routes.json", "log_level": "warn",
 "access_log": "$W/access.log", "admin": {"listen": "127.0.0.1:$ADMIN_PORT"},
 "request_log_db": {"host": "127.0.0.1", "port": $DB_PORT, "user": "root", "database": "modelgate",
   "spool_dir": "$W/spool"}}
JSON
}

inserted() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/stats/dblog" |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["inserted"])' 2>/dev/null || echo 0
}

# replay NAME BIN: sets US (the database thread's CPU per row) and DB_US (mariadbd's)
replay() {
    local name=$1 bin=$2 pid tid ins=0 ns pp='' rows t0 t1
    sql 'DROP DATABASE IF EXISTS modelgate' >/dev/null
    rm -rf "$W/spool" && mkdir -p "$W/spool" && cp "$W/records" "$W/spool/00000000000000000001.spool"
    t0=$(sess_ticks "${SID[mariadb]}")
    start gw "$GW_CPU" "$bin" --config "$W/gateway.json"
    pid=${SID[gw]}
    wait_port "$ADMIN_PORT" 20 gw || die "$name: the gateway did not start: $(tail -3 "$W/gw.out")"
    if [ "$PERF" = 1 ]; then
        perf record -q -F 4999 -g -p "$pid" -o "$W/perf.$name.data" >/dev/null 2>&1 &
        pp=$!
    fi
    for _ in $(seq 1 1200); do
        ins=$(inserted)
        [ "$ins" -ge "$N" ] 2>/dev/null && break
        sleep 0.1
    done
    t1=$(sess_ticks "${SID[mariadb]}")
    tid=$(grep -lx mg-dblog /proc/"$pid"/task/*/comm 2>/dev/null | head -1)
    [ -n "$tid" ] || die "$name: the gateway has no mg-dblog thread"
    # nanoseconds on a CPU (schedstat), not the 10 ms ticks of stat
    ns=$(cut -d' ' -f1 "${tid%/comm}/schedstat" 2>/dev/null)
    [ -n "$ns" ] || die "$name: cannot read the mg-dblog thread's CPU time"
    [ -n "$pp" ] && { kill -INT "$pp"; wait "$pp"; }
    stop gw
    [ "$ins" -ge "$N" ] 2>/dev/null || die "$name: only $ins of $N records went in"
    rows=$(sql 'SELECT COUNT(*) FROM modelgate.request_log')
    [ "$rows" = "$N" ] || die "$name: $rows rows for $N records"
    US=$("$PY" -c "print('%.3f' % ($ns / 1000 / $N))")
    DB_US=$("$PY" -c "print('%.2f' % ($((t1 - t0)) * $TICK_US / $N))")
}

need_tools mariadb mariadb-install-db "$MARIADBD" taskset setsid curl "$PY"
say "# modelgate request log, database thread CPU per row replaying $N spooled records, $(date -u +%FT%TZ)"
say "# $(nproc) CPUs; $("$MARIADBD" --version 2>/dev/null | head -1); gateway CPU [$GW_CPU], mariadbd CPU [$DB_CPU]"
start_mariadb
write_spool_source
declare -A RES=() DBRES=()
BINS="now"
[ -n "$BEFORE_BIN" ] && BINS="before now"
say "round build   us/row  mariadbd_us/row  rows (every record a row)"
for r in $(seq 1 "$ROUNDS"); do
    for b in $BINS; do
        bin=$MODELGATE_BIN
        [ "$b" = before ] && bin=$BEFORE_BIN
        replay "$b" "$bin"
        say "$r     $(printf '%-7s %6s  %15s  %s' "$b" "$US" "$DB_US" "$N")"
        RES[$b]="${RES[$b]:-} $US"
        DBRES[$b]="${DBRES[$b]:-} $DB_US"
    done
done
declare -A MED=()
for b in $BINS; do
    # shellcheck disable=SC2086 # the rounds' figures, one per word
    MED[$b]=$(printf '%s\n' ${RES[$b]} | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
    say "$b: median ${MED[$b]} us/row (rounds:${RES[$b]}); mariadbd:${DBRES[$b]} us/row"
done
[ -n "$BEFORE_BIN" ] && say "now/before: $("$PY" -c "print('%.3f' % (${MED[now]} / ${MED[before]}))")"
if [ "$PERF" = 1 ]; then
    say "## perf: the database thread, last round of 'now'"
    perf report -i "$W/perf.now.data" --comm mg-dblog --no-children --sort dso,sym --stdio 2>/dev/null |
        grep -v '^#' | grep '%' | grep -v -- '--' | head -25
fi
