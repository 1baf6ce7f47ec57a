#!/usr/bin/env bash
# bench/run.sh - HTTP/2 proxy benchmark: modelgate against nghttpx and a direct-to-backend ceiling,
# on this machine, over 127.0.0.1 only. See bench/README.md for what is measured and how to read it.
#
#   bench/run.sh                     3 interleaved rounds (a few minutes), table on stdout
#   QUICK=1 bench/run.sh             smoke run: 1 round, small counts (under a minute)
#   MODELGATE_BIN=/path/modelgate bench/run.sh
#   BEFORE_BIN=/path/older/modelgate bench/run.sh   + contestant "before": another build, in the
#                                                    same interleaved rounds (a change's A/B)
#
# Every server runs in its own session under a temp dir in /dev/shm, every h2load run is capped
# by `timeout`, and everything is stopped and removed on exit (KEEP=1 keeps the dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3 # Debian's: the helpers below need nothing outside the standard library

# ---------------------------------------------------------------- knobs (environment)
# QUICK=1 changes the defaults only; variables set explicitly still win
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_thr="-n 10000 -c 50 -m 10 -t 1" d_lat="-n 1000 -c 1 -m 1 -t 1" d_warm="-n 1000 -c 10 -m 10 -t 1"
else
    d_rounds=3 d_thr="-n 100000 -c 50 -m 10 -t 1" d_lat="-n 10000 -c 1 -m 1 -t 1" d_warm="-n 5000 -c 10 -m 10 -t 1"
fi
ROUNDS=${ROUNDS:-$d_rounds}
THR_ARGS=${THR_ARGS:-$d_thr}   # throughput: 500 streams in flight
LAT_ARGS=${LAT_ARGS:-$d_lat}   # latency: one request in flight
WARM_ARGS=${WARM_ARGS:-$d_warm} # untimed, once per contestant
RUN_TIMEOUT=${RUN_TIMEOUT:-60} # hard cap (s) on each h2load run
PROFILES=${PROFILES:-thr lat}
CONTESTANTS=${CONTESTANTS:-direct nghttpx modelgate}
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
BEFORE_BIN=${BEFORE_BIN:-} # optional: contestant "before" = modelgate with this binary
[ -n "$BEFORE_BIN" ] && CONTESTANTS="$CONTESTANTS before"
MODELGATE_ARGS=${MODELGATE_ARGS:-} # extra gateway flags, e.g. '--config conf/bench.json'
H2LOAD_EXTRA=${H2LOAD_EXTRA:-}     # extra h2load flags for every run, e.g. "-H 'x-api-key: k'"
PORT_BASE=${PORT_BASE:-19100}
QUIET_PCT=${QUIET_PCT:-10} # wait before each run until the machine is below this busy% ...
QUIET_MAX=${QUIET_MAX:-30} # ... but at most this many seconds
NOISY_PCT=${NOISY_PCT:-10} # a run during which others used > this % of one CPU is retried
# CPU layout (taskset lists; empty = unpinned). With 2+ CPUs, thr gives the contestant a core of
# its own and puts h2load and the backend on the other; lat runs everything on one core (see
# README: on a VM, cross-core wake-ups otherwise dominate a 1-request-in-flight latency).
if [ "$(nproc)" -ge 2 ] && [ "${PIN:-1}" = 1 ]; then
    THR_LOADGEN=${THR_LOADGEN-0} THR_CONTESTANT=${THR_CONTESTANT-1} THR_BACKEND=${THR_BACKEND-0}
    LAT_LOADGEN=${LAT_LOADGEN-1} LAT_CONTESTANT=${LAT_CONTESTANT-1} LAT_BACKEND=${LAT_BACKEND-1}
else
    THR_LOADGEN='' THR_CONTESTANT='' THR_BACKEND='' LAT_LOADGEN='' LAT_CONTESTANT='' LAT_BACKEND=''
fi

BE_PORT=$((PORT_BASE + 1))
declare -A PORT=([direct]=$((PORT_BASE + 2)) [nghttpx]=$((PORT_BASE + 3)) [modelgate]=$((PORT_BASE + 4))
    [before]=$((PORT_BASE + 5)))
declare -A DEAD=() # contestants that exited during a run
LOADGEN_CPUS=

# ---------------------------------------------------------------- plumbing
# say die start stop wait_port sess_ticks others_ticks our_sids wait_quiet pct need_tools, SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-bench

# ---------------------------------------------------------------- setup
write_files() {
    # the backend answers every POST /v1/predict with this 95-byte JSON file
    mkdir -p "$W/htdocs/v1"
    printf '%s\n' '{"model":"digits","version":"v3","prediction":7,"scores":[0.01,0.02,0.9,0.07],"latency_us":42}' \
        >"$W/htdocs/v1/predict"
    printf '%s' '{"app":"digits","user_id":"u-12345","features":[0.1,0.2,0.3,0.4],"request_id":"r-1"}' \
        >"$W/req.json"
    # nghttpx: one worker, h2c (prior knowledge) in front, h2c to the backend
    cat >"$W/nghttpx.conf" <<EOF
frontend=127.0.0.1,${PORT[nghttpx]};no-tls
backend=127.0.0.1,$BE_PORT;;proto=h2
workers=1
errorlog-file=$W/nghttpx.err
frontend-http2-read-timeout=5m
backend-read-timeout=5m
EOF
}

# modelgate_ok NAME BINARY
modelgate_ok() {
    if [ ! -x "$2" ]; then
        say "bench: SKIPPING $1: $2 does not exist or is not executable."
        say "       Build it (cmake -S . -B build && cmake --build build -j) or set MODELGATE_BIN."
        return 1
    fi
}

# start_contestant NAME: starts it and waits until it listens; non-zero (with the reason printed)
# when it does not come up
start_contestant() {
    local c=$1 cpus=$THR_CONTESTANT
    case $c in
    direct) start direct "$cpus" nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "${PORT[direct]}" ;;
    nghttpx) start nghttpx "$cpus" nghttpx --conf="$W/nghttpx.conf" ;;
    modelgate | before)
        local bin=$MODELGATE_BIN
        [ "$c" = before ] && bin=$BEFORE_BIN
        # shellcheck disable=SC2086
        start "$c" "$cpus" "$bin" --listen "127.0.0.1:${PORT[$c]}" \
            --backend "127.0.0.1:$BE_PORT" --workers 1 $MODELGATE_ARGS
        ;;
    *) die "unknown contestant $c (known: direct nghttpx modelgate before)" ;;
    esac
    if ! wait_port "${PORT[$c]}" 10 "$c"; then
        say "bench: $c exited or did not listen on 127.0.0.1:${PORT[$c]} within 10 s; its output:"
        tail -20 "$W/$c.out" | sed 's/^/    /'
        stop "$c"
        return 1
    fi
}

# sanity NAME: one request through it must return the backend's JSON
sanity() {
    local body
    # shellcheck disable=SC2086
    body=$(timeout 10 nghttp -d "$W/req.json" -H 'content-type: application/json' \
        "http://127.0.0.1:${PORT[$1]}/v1/predict" 2>&1)
    [[ $body == *'"prediction":7'* ]] && return 0
    say "bench: $1 does not forward POST /v1/predict to the backend; got: ${body:0:300}"
    return 1
}

# layout PROFILE: pin h2load and re-pin every thread of every running server for that profile
layout() {
    if [ "$1" = lat ]; then
        pin_sessions "$LAT_LOADGEN" backend "$LAT_BACKEND" "$LAT_CONTESTANT"
    else
        pin_sessions "$THR_LOADGEN" backend "$THR_BACKEND" "$THR_CONTESTANT"
    fi
}

# h2run NAME ARGS...: one h2load run; prints
# "rps ok expected p50_us p99_us cpu_us_per_req backend_us_per_req foreign_pct status"
h2run() {
    local c=$1
    shift
    local out="$W/h2load.out" lg="$W/h2load.tsv" t0 t1 b0 b1 o0 o1 w0 w1 rc
    rm -f "$lg"
    # shellcheck disable=SC2046
    o0=$(others_ticks $(our_sids)) t0=$(sess_ticks "${SID[$c]}") b0=$(sess_ticks "${SID[backend]}")
    w0=$(date +%s%N)
    # shellcheck disable=SC2046,SC2086
    timeout -k 5 "$RUN_TIMEOUT" $(pin "$LOADGEN_CPUS") h2load "$@" $H2LOAD_EXTRA \
        -H 'content-type: application/json' -d "$W/req.json" --log-file="$lg" \
        "http://127.0.0.1:${PORT[$c]}/v1/predict" >"$out" 2>&1
    rc=$?
    w1=$(date +%s%N)
    # shellcheck disable=SC2046
    t1=$(sess_ticks "${SID[$c]}") b1=$(sess_ticks "${SID[backend]}") o1=$(others_ticks $(our_sids))
    { echo "=== $c rc=$rc: h2load $*"; cat "$out"; } >>"$W/raw.txt"

    local rps ok exp p50 p99 n cpu bcpu foreign status=ok
    rps=$(awk '/^finished in/{gsub(",", ""); print $4}' "$out")
    ok=$(awk '/^requests:/{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) print $i}' "$out")
    exp=$(awk '/^requests:/{print $2}' "$out")
    read -r p50 p99 n < <(pct "$lg" 2>/dev/null || echo "- - 0")
    [ "$rc" = 0 ] && [ -n "$rps" ] && [ "${ok:-0}" = "${exp:-x}" ] && [ "$n" = "$ok" ] || status=bad
    kill -0 "${SID[$c]}" 2>/dev/null || status=died # its CPU time is gone with it
    if [ "$status" = bad ]; then # stdout is the result line: explain on stderr
        local why="exit status $rc"
        [ "$rc" = 124 ] && why="stopped by timeout after ${RUN_TIMEOUT}s"
        say "bench: $c: h2load $why, ${ok:-0} of ${exp:-?} requests succeeded; h2load said:" >&2
        grep -v '^progress' "$out" | tail -8 | sed 's/^/    /' >&2
    fi
    if [ "$status" != died ] && [ "${ok:-0}" -gt 0 ] 2>/dev/null; then
        cpu=$("$PY" -c "print(f'{$(( (t1 - t0) * TICK_US ))/$ok:.1f}')")
        bcpu=$("$PY" -c "print(f'{$(( (b1 - b0) * TICK_US ))/$ok:.1f}')")
        [ "$c" = direct ] && bcpu=- # the direct server is the contestant itself
    else
        cpu=- bcpu=-
    fi
    # CPU that other processes used during the run, in % of one CPU. Ticks are 1/CLK_TCK s
    # samples, so a short run is called noisy only beyond a few ticks of sampling error.
    foreign=$(((o1 - o0) * TICK_US * 100 / ((w1 - w0) / 1000 + 1)))
    [ "$status" = ok ] && [ "$foreign" -gt "$NOISY_PCT" ] && [ $((o1 - o0)) -gt 3 ] && status=noisy
    echo "${rps:-0} ${ok:-0} ${exp:-0} $p50 $p99 $cpu $bcpu $foreign $status"
}

# ---------------------------------------------------------------- run
need_tools h2load nghttp nghttpd nghttpx taskset timeout setsid pgrep ss "$PY"
for p in "$BE_PORT" "${PORT[@]}"; do
    ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set PORT_BASE to another range)"
done
write_files

say "# modelgate proxy benchmark, $(date -Is)"
say "# $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
say "# $(h2load --version | head -1); nghttpx $(nghttpx --version | awk '{print $2}'); backend: nghttpd, 95-byte JSON file"
say "# thr: h2load $THR_ARGS | lat: h2load $LAT_ARGS | POST /v1/predict with an 84-byte JSON body | rounds: $ROUNDS"
say "# pinning thr: h2load=[${THR_LOADGEN:-any}] contestant=[${THR_CONTESTANT:-any}] backend=[${THR_BACKEND:-any}]; lat: h2load=[${LAT_LOADGEN:-any}] contestant=[${LAT_CONTESTANT:-any}] backend=[${LAT_BACKEND:-any}]"

start backend "$THR_BACKEND" nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "$BE_PORT"
wait_port "$BE_PORT" 10 backend || die "backend (nghttpd) did not start: $(tail -5 "$W/backend.out")"

RUNNING=()
for c in $CONTESTANTS; do
    [ "$c" = modelgate ] && ! modelgate_ok modelgate "$MODELGATE_BIN" && continue
    [ "$c" = before ] && ! modelgate_ok before "$BEFORE_BIN" && continue
    start_contestant "$c" || continue
    if ! sanity "$c"; then stop "$c"; continue; fi
    RUNNING+=("$c")
done
[ ${#RUNNING[@]} -gt 0 ] || die "no contestant is running"
say "# contestants: ${RUNNING[*]}"

layout thr
for c in "${RUNNING[@]}"; do
    # shellcheck disable=SC2086
    h2run "$c" $WARM_ARGS >/dev/null # untimed: connection pools, caches, page faults
done

printf 'round\tprofile\tcontestant\trps\tok\texpected\tp50_us\tp99_us\tcpu_us\tbackend_us\tforeign_pct\tstatus\n' >"$W/runs.tsv"
say ""
say "round profile contestant  req/s      ok/expected     p50us   p99us  cpu_us/req  backend_us/req  others%cpu  status"
for r in $(seq 1 "$ROUNDS"); do
    for prof in $PROFILES; do
        args=$THR_ARGS
        [ "$prof" = lat ] && args=$LAT_ARGS
        layout "$prof"
        for c in "${RUNNING[@]}"; do # interleaved: A B C, A B C, ... so drift hits everyone
            [ -n "${DEAD[$c]:-}" ] && continue
            for try in 0 1 2; do
                waited=$(wait_quiet)
                # shellcheck disable=SC2086
                read -r rps ok exp p50 p99 cpu bcpu foreign status < <(h2run "$c" $args)
                if [ "$status" != noisy ] || [ "$try" -ge 2 ]; then break; fi
                say "      $c $prof: other processes used ${foreign}% of a CPU during the run (waited ${waited}s for quiet); retrying"
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$prof" "$c" "$rps" \
                "$ok" "$exp" "$p50" "$p99" "$cpu" "$bcpu" "$foreign" "$status" >>"$W/runs.tsv"
            say "$(printf '%-5s %-7s %-11s %-10s %-15s %7s %7s %11s %15s %11s  %s' "$r" "$prof" "$c" \
                "$rps" "$ok/$exp" "$p50" "$p99" "$cpu" "$bcpu" "$foreign" "$status")"
            if [ "$status" = died ]; then
                DEAD[$c]=1
                say "bench: $c exited during the run; skipping it from now on. Its last output:"
                tail -20 "$W/$c.out" | sed 's/^/    /'
            fi
        done
    done
done

say ""
say "## summary: medians over $ROUNDS round(s)"
PYTHONPATH="$HERE" "$PY" - "$W/runs.tsv" <<'PY'
import csv, statistics, sys

from tsv import read_rows, num, med

rows = read_rows(sys.argv[1])

agg = {}
for r in rows:
    a = agg.setdefault((r["profile"], r["contestant"]), {"rps": [], "p50": [], "p99": [], "cpu": [], "be": [], "bad": 0})
    if r["status"] in ("bad", "died"):
        a["bad"] += 1
        continue
    for k, col in (("rps", "rps"), ("p50", "p50_us"), ("p99", "p99_us"), ("cpu", "cpu_us"), ("be", "backend_us")):
        a[k].append(num(r[col]))

def fmt(x, spec):
    return "-" if x is None else format(x, spec)

print(f"{'profile':8}{'contestant':12}{'req/s':>10} {'min-max':>17} {'p50/p99 us':>14} {'cpu us/req':>11} {'backend us/req':>15} {'vs direct':>10} {'ours/nghttpx':>13}  note")
for prof in ("thr", "lat"):
    d = agg.get((prof, "direct"))
    peer = agg.get((prof, "nghttpx"))
    for c in ("direct", "nghttpx", "modelgate", "before"):
        a = agg.get((prof, c))
        if a is None:
            continue
        rps = [x for x in a["rps"] if x is not None]
        m = med(rps)
        mm = f"{min(rps):,.0f}-{max(rps):,.0f}" if rps else "-"
        p = f"{fmt(med(a['p50']), '.0f')}/{fmt(med(a['p99']), '.0f')}"
        vs = fmt(m / med(d["rps"]), ".2f") if d and m and med(d["rps"]) else "-"
        ours = "-"
        if c in ("modelgate", "before") and peer and m and med(peer["rps"]):
            ours = format(m / med(peer["rps"]), ".2f")
        note = f"{a['bad']} failed run(s)" if a["bad"] else ""
        if prof == "lat" and d and c != "direct" and med(a["p50"]) is not None and med(d["p50"]) is not None:
            note = (note + " " if note else "") + f"+{med(a['p50']) - med(d['p50']):.0f} us p50 vs direct"
        print(f"{prof:8}{c:12}{fmt(m, ',.0f'):>10} {mm:>17} {p:>14} {fmt(med(a['cpu']), '.1f'):>11} {fmt(med(a['be']), '.1f'):>15} {vs:>10} {ours:>13}  {note}")
PY
say ""
say "thr = h2load $THR_ARGS; lat = h2load $LAT_ARGS. p50/p99: request start to end of response,"
say "from h2load --log-file. cpu us/req: user+sys CPU of the contestant's process tree per request;"
say "backend us/req: the backend's, which a proxy also drives. others%cpu: CPU used by processes"
say "outside this benchmark during the run (noisy runs are retried twice, then kept and flagged)."
[ "${KEEP:-0}" = 1 ] && say "raw h2load output: $W/raw.txt"
exit 0
