#!/usr/bin/env bash
# bench/runtime.sh - model-serving benchmark: modelgate-runtime against a plain Python server
# (bench/python_server.py: http.server + xgboost.Booster.inplace_predict) serving the same XGBoost
# digits classifier, on this machine, over 127.0.0.1 only; then a model switch under load.
# See bench/README.md ("modelgate-runtime against a Python server") for what is measured.
#
#   bench/runtime.sh                 3 interleaved rounds of 10 s runs (about 4 minutes)
#   QUICK=1 bench/runtime.sh         smoke run: 1 round of 3 s runs (under a minute)
#   RUNTIME_BIN=/path/modelgate-runtime bench/runtime.sh
#
# Its plumbing (servers in sessions, CPU accounting, quiet-machine checks) is bench/lib.sh.
# Every server runs in its own session under a temp dir in /dev/shm, every h2load run is capped
# by `timeout`, and everything is stopped and removed on exit (KEEP=1 keeps the dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3 # Debian's: python3-xgboost, python3-sklearn, python3-numpy

# ---------------------------------------------------------------- knobs (environment)
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_dur=3 d_warm=1 d_sw_dur=6
else
    d_rounds=3 d_dur=10 d_warm=2 d_sw_dur=10
fi
ROUNDS=${ROUNDS:-$d_rounds}
DURATION=${DURATION:-$d_dur}           # seconds per measured h2load run (h2load -D)
WARM_DURATION=${WARM_DURATION:-$d_warm} # untimed warm-up run per contestant and profile
PROFILES=${PROFILES:-c10m1 c10m10}
CONTESTANTS=${CONTESTANTS:-runtime-h2 runtime-h1 python}
RUNTIME_BIN=${RUNTIME_BIN:-$ROOT/build/backends/runtime/modelgate-runtime}
RUNTIME_THREADS=${RUNTIME_THREADS:-} # inference threads; empty = the runtime's default (one CPU pinned: 0, inline)
RUNTIME_ARGS=${RUNTIME_ARGS:-}        # extra runtime flags, e.g. '--max-wait-us 200'
MODELS_DIR=${MODELS_DIR:-}            # trained models (train_digits.py output); default: train now
SWITCH=${SWITCH:-1}                   # 0 skips the switch-under-load measurement
SWITCH_DURATION=${SWITCH_DURATION:-$d_sw_dur} # h2load -D of the switch run ...
SWITCH_AT=${SWITCH_AT:-3}                     # ... and when (s) the descriptor is rewritten
SWITCH_WATCH_MS=${SWITCH_WATCH_MS:-200}       # the runtime's --watch-ms for that run
PORT_BASE=${PORT_BASE:-19300}
QUIET_PCT=${QUIET_PCT:-10} # wait before each run until the machine is below this busy% ...
QUIET_MAX=${QUIET_MAX:-30} # ... but at most this many seconds
NOISY_PCT=${NOISY_PCT:-10} # a run during which others used > this % of one CPU is retried (twice)
# CPU layout, as bench/run.sh's thr profile: with 2+ CPUs the server (either contestant) gets
# CPU 1 to itself and h2load runs on CPU 0. PIN=0: nothing pinned.
if [ "$(nproc)" -ge 2 ] && [ "${PIN:-1}" = 1 ]; then
    LOADGEN_CPUS=${LOADGEN_CPUS-0} SERVER_CPUS=${SERVER_CPUS-1}
else
    LOADGEN_CPUS='' SERVER_CPUS=''
fi
RUN_TIMEOUT=$((DURATION + WARM_DURATION + 30))

declare -A PORT=([runtime]=$((PORT_BASE + 1)) [python]=$((PORT_BASE + 2)) [switch]=$((PORT_BASE + 3)))

# ---------------------------------------------------------------- plumbing
# say die start stop wait_port sess_ticks others_ticks our_sids wait_quiet pct need_tools, SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-rtbench

status_json() { curl -s --max-time 2 "http://127.0.0.1:$1/v1/status"; }
json_get() { # JSON-TEXT PYTHON-EXPR-ON-d
    "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------- setup
prepare_models() {
    if [ -z "$MODELS_DIR" ]; then
        MODELS_DIR=$W/models
        timeout 300 "$PY" "$ROOT/backends/runtime/tools/train_digits.py" "$MODELS_DIR" >"$W/train.out" 2>&1 ||
            die "train_digits.py failed: $(tail -5 "$W/train.out")"
    fi
    [ -f "$MODELS_DIR/xgb_digits.json" ] || die "no xgb_digits.json in $MODELS_DIR"
    # the request: the first held-out digit of expected.json, as the runtime's /v1/predict takes it
    "$PY" - "$MODELS_DIR/expected.json" "$W/req.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    json.dump({"input": e["inputs"][0]}, f, separators=(",", ":"))
print(e["models"]["xgb_multi"]["outputs"][0], file=open(sys.argv[2] + ".label", "w"))
PY
}

# sanity NAME PORT: one POST must answer the expected label
sanity() {
    local body want
    want=$(cat "$W/req.json.label")
    body=$(curl -s --max-time 10 -H 'content-type: application/json' --data-binary @"$W/req.json" \
        "http://127.0.0.1:$2/v1/predict")
    [[ $body == *"\"output\":$want,"* ]] && return 0
    say "bench: $1 does not answer POST /v1/predict with label $want; got: ${body:0:300}"
    return 1
}

profile_args() {
    case $1 in
    c10m1) echo "-c 10 -m 1" ;;
    c10m10) echo "-c 10 -m 10" ;;
    c*m*) local c=${1#c} && echo "-c ${c%m*} -m ${1#*m}" ;;
    *) die "unknown profile $1" ;;
    esac
}

# h2run CONTESTANT DURATION ARGS...: one h2load run; prints
# "rps ok total non2xx p50_us p99_us cpu_us_per_req foreign_pct status"
h2run() {
    local c=$1 dur=$2
    shift 2
    local server=runtime proto="" out="$W/h2load.out" lg="$W/h2load.tsv" t0 t1 o0 o1 w0 w1 rc
    [ "$c" = python ] && server=python
    [ "$c" != runtime-h2 ] && proto=--h1
    rm -f "$lg"
    # shellcheck disable=SC2046
    o0=$(others_ticks $(our_sids)) t0=$(sess_ticks "${SID[$server]}")
    w0=$(date +%s%N)
    # shellcheck disable=SC2046,SC2086
    timeout -k 5 "$RUN_TIMEOUT" $(pin "$LOADGEN_CPUS") h2load $proto -D "$dur" "$@" \
        -H 'content-type: application/json' -d "$W/req.json" --log-file="$lg" \
        "http://127.0.0.1:${PORT[$server]}/v1/predict" >"$out" 2>&1
    rc=$?
    w1=$(date +%s%N)
    # shellcheck disable=SC2046
    t1=$(sess_ticks "${SID[$server]}") o1=$(others_ticks $(our_sids))
    { echo "=== $c rc=$rc: h2load $proto -D $dur $*"; cat "$out"; } >>"$W/raw.txt"
    local rps ok total s2xx non2xx p50 p99 n cpu foreign status=ok
    rps=$(awk '/^finished in/{gsub(",", ""); print $4}' "$out")
    total=$(awk '/^requests:/{print $2}' "$out")
    ok=$(awk '/^requests:/{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) print $i}' "$out")
    s2xx=$(awk '/^status codes:/{print $3}' "$out")
    read -r p50 p99 n < <(pct "$lg" 2>/dev/null || echo "- - 0")
    non2xx=$(( ${total:-0} - ${s2xx:-0} ))
    [ "$non2xx" -lt 0 ] && non2xx=0 # h2load counts the statuses of requests past -D, too
    [ "$rc" = 0 ] && [ -n "$rps" ] && [ "${ok:-0}" = "${total:-x}" ] && [ "${ok:-0}" -gt 0 ] || status=bad
    kill -0 "${SID[$server]}" 2>/dev/null || status=died
    if [ "$status" = bad ]; then
        local why="exit status $rc"
        [ "$rc" = 124 ] && why="stopped by timeout after ${RUN_TIMEOUT}s"
        say "bench: $c: h2load $why, ${ok:-0} of ${total:-?} requests succeeded; h2load said:" >&2
        grep -v '^progress' "$out" | tail -8 | sed 's/^/    /' >&2
    fi
    if [ "$status" != died ] && [ "${ok:-0}" -gt 0 ] 2>/dev/null; then
        cpu=$("$PY" -c "print(f'{$(( (t1 - t0) * TICK_US ))/$ok:.1f}')")
    else
        cpu=-
    fi
    foreign=$(((o1 - o0) * TICK_US * 100 / ((w1 - w0) / 1000 + 1)))
    [ "$status" = ok ] && [ "$foreign" -gt "$NOISY_PCT" ] && [ $((o1 - o0)) -gt 3 ] && status=noisy
    echo "${rps:-0} ${ok:-0} ${total:-0} $non2xx $p50 $p99 $cpu $foreign $status"
}

# ---------------------------------------------------------------- run
py_miss=()
"$PY" -c 'import xgboost, sklearn, numpy' 2>/dev/null || py_miss=(python3-xgboost/python3-sklearn)
need_tools h2load taskset timeout setsid pgrep ss curl -- "${py_miss[@]}"
[ -x "$RUNTIME_BIN" ] || die "$RUNTIME_BIN does not exist or is not executable; build it
       (cmake -S . -B build && cmake --build build --target modelgate-runtime) or set RUNTIME_BIN"
for p in "${PORT[@]}"; do
    ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set PORT_BASE to another range)"
done
prepare_models

say "# modelgate-runtime vs a Python server, $(date -Is)"
say "# $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); $(h2load --version | head -1)"
say "# model: xgb_digits.json (XGBoost $("$PY" -c 'import xgboost; print(xgboost.__version__)'), multi:softprob, 10 classes, 20 rounds, depth 4); request: POST /v1/predict, $(wc -c <"$W/req.json")-byte JSON body (64 numbers)"
say "# runtime: $RUNTIME_BIN --threads ${RUNTIME_THREADS:-default} $RUNTIME_ARGS | python: bench/python_server.py (ThreadingHTTPServer, Booster.inplace_predict, nthread 1)"
say "# h2load -D ${DURATION}s per run, profiles: $PROFILES; rounds: $ROUNDS; pinning: server=[${SERVER_CPUS:-any}] h2load=[${LOADGEN_CPUS:-any}]"

# shellcheck disable=SC2086
start runtime "$SERVER_CPUS" env OPENBLAS_NUM_THREADS=1 "$RUNTIME_BIN" \
    --listen "127.0.0.1:${PORT[runtime]}" --model "$MODELS_DIR/xgb_digits.json" --kind xgboost \
    --name digits --model-version 1 ${RUNTIME_THREADS:+--threads "$RUNTIME_THREADS"} $RUNTIME_ARGS
start python "$SERVER_CPUS" env OMP_NUM_THREADS=1 "$PY" "$HERE/python_server.py" \
    --listen "127.0.0.1:${PORT[python]}" --model "$MODELS_DIR/xgb_digits.json"
for s in runtime python; do
    if ! wait_port "${PORT[$s]}" 20 "$s"; then
        tail -20 "$W/$s.out" | sed 's/^/    /'
        die "$s did not listen on 127.0.0.1:${PORT[$s]}"
    fi
done
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORT[runtime]}/readyz" >/dev/null && break; sleep 0.1; done
sanity runtime "${PORT[runtime]}" || die "the runtime answers wrong"
sanity python "${PORT[python]}" || die "the python server answers wrong"

for prof in $PROFILES; do # untimed: page faults, caches, connection set-up paths
    for c in $CONTESTANTS; do
        # shellcheck disable=SC2046
        h2run "$c" "$WARM_DURATION" $(profile_args "$prof") >/dev/null
    done
done

printf 'round\tprofile\tcontestant\trps\tok\ttotal\tnon2xx\tp50_us\tp99_us\tcpu_us\tforeign_pct\tstatus\n' >"$W/runs.tsv"
say ""
say "round profile contestant  req/s      ok/total          non-2xx  p50us   p99us  cpu_us/req  others%cpu  status"
for r in $(seq 1 "$ROUNDS"); do
    for prof in $PROFILES; do
        for c in $CONTESTANTS; do # interleaved: A B C, A B C, ... so drift hits everyone
            for try in 0 1 2; do
                waited=$(wait_quiet)
                # shellcheck disable=SC2046
                read -r rps ok total non2xx p50 p99 cpu foreign status < <(h2run "$c" "$DURATION" $(profile_args "$prof"))
                if [ "$status" != noisy ] || [ "$try" -ge 2 ]; then break; fi
                say "      $c $prof: other processes used ${foreign}% of a CPU during the run (waited ${waited}s for quiet); retrying"
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$prof" "$c" "$rps" "$ok" \
                "$total" "$non2xx" "$p50" "$p99" "$cpu" "$foreign" "$status" >>"$W/runs.tsv"
            say "$(printf '%-5s %-7s %-11s %-10s %-17s %7s %7s %7s %11s %11s  %s' "$r" "$prof" "$c" \
                "$rps" "$ok/$total" "$non2xx" "$p50" "$p99" "$cpu" "$foreign" "$status")"
            [ "$status" = died ] && die "a server exited during the run: $(tail -5 "$W"/*.out)"
        done
    done
done

say ""
say "## summary: medians over $ROUNDS round(s)"
PYTHONPATH="$HERE" "$PY" - "$W/runs.tsv" <<'PY'
import csv, statistics, sys

from tsv import read_rows, num, med, fmt

rows = read_rows(sys.argv[1])

agg, profiles = {}, []
for r in rows:
    if r["profile"] not in profiles:
        profiles.append(r["profile"])
    a = agg.setdefault((r["profile"], r["contestant"]), {"rps": [], "p50": [], "p99": [], "cpu": [], "bad": 0})
    if r["status"] in ("bad", "died"):
        a["bad"] += 1
        continue
    for k, col in (("rps", "rps"), ("p50", "p50_us"), ("p99", "p99_us"), ("cpu", "cpu_us")):
        a[k].append(num(r[col]))

print(f"{'profile':8}{'contestant':12}{'req/s':>10} {'min-max':>17} {'p50/p99 us':>14} {'cpu us/req':>11} {'vs python':>10}  note")
for prof in profiles:
    py = agg.get((prof, "python"))
    pyr = med(py["rps"]) if py else None
    for c in ("runtime-h2", "runtime-h1", "python"):
        a = agg.get((prof, c))
        if a is None:
            continue
        rps = [x for x in a["rps"] if x is not None]
        m = med(rps)
        mm = f"{min(rps):,.0f}-{max(rps):,.0f}" if rps else "-"
        p = f"{fmt(med(a['p50']), '.0f')}/{fmt(med(a['p99']), '.0f')}"
        ratio = m / pyr if m and pyr and c != "python" else None
        note = f"{a['bad']} failed run(s)" if a["bad"] else ""
        if prof == "c10m1" and c != "python" and ratio is not None and med(a["p99"]) is not None:
            ok = ratio >= 10 and med(a["p99"]) < 2000
            note = (note + " " if note else "") + ("meets" if ok else "MISSES") + \
                " the target (>= 10x python, p99 < 2 ms)"
        print(f"{prof:8}{c:12}{fmt(m, ',.0f'):>10} {mm:>17} {p:>14} {fmt(med(a['cpu']), '.1f'):>11} "
              f"{fmt(ratio, '.1f') + ('x' if ratio else ''):>10}  {note}")
PY

# ---------------------------------------------------------------- switch under load
if [ "$SWITCH" = 1 ]; then
    say ""
    say "## switch under load: h2load -D $SWITCH_DURATION -c 10 -m 10 (h2c); at ${SWITCH_AT}s the descriptor is rewritten from xgb_digits.json v1 to xgb_digits.ubj v2 (--watch-ms $SWITCH_WATCH_MS)"
    stop runtime
    stop python
    SW=$W/switch
    mkdir -p "$SW"
    cp "$MODELS_DIR/xgb_digits.json" "$SW/digits-1.json"
    cp "$MODELS_DIR/xgb_digits.ubj" "$SW/digits-2.ubj"
    printf '{"file": "digits-1.json", "kind": "xgboost", "name": "digits", "version": "1"}\n' >"$SW/model.json"
    # shellcheck disable=SC2086
    start switch "$SERVER_CPUS" env OPENBLAS_NUM_THREADS=1 "$RUNTIME_BIN" \
        --listen "127.0.0.1:${PORT[switch]}" --model "$SW/model.json" ${RUNTIME_THREADS:+--threads "$RUNTIME_THREADS"} \
        --watch-ms "$SWITCH_WATCH_MS" $RUNTIME_ARGS
    wait_port "${PORT[switch]}" 20 switch || die "the switch runtime did not start: $(tail -5 "$W/switch.out")"
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORT[switch]}/readyz" >/dev/null && break; sleep 0.1; done
    waited=$(wait_quiet)
    lg=$W/switch.tsv
    # shellcheck disable=SC2046
    timeout -k 5 $((SWITCH_DURATION + 30)) $(pin "$LOADGEN_CPUS") h2load -D "$SWITCH_DURATION" -c 10 -m 10 \
        -H 'content-type: application/json' -d "$W/req.json" --log-file="$lg" \
        "http://127.0.0.1:${PORT[switch]}/v1/predict" >"$W/switch.h2load" 2>&1 &
    h2pid=$!
    sleep "$SWITCH_AT"
    printf '{"file": "digits-2.ubj", "kind": "xgboost", "name": "digits", "version": "2"}\n' >"$SW/model.json.tmp"
    t_rewrite=$(date +%s%N)
    mv "$SW/model.json.tmp" "$SW/model.json"
    t_seen=
    for _ in $(seq 1 1000); do # up to 10 s
        v=$(json_get "$(status_json "${PORT[switch]}")" 'd["model"]["version"]')
        if [ "$v" = 2 ]; then t_seen=$(date +%s%N); break; fi
        sleep 0.01
    done
    wait "$h2pid"
    rc=$?
    cat "$W/switch.h2load" >>"$W/raw.txt"
    st=$(status_json "${PORT[switch]}")
    out=$W/switch.h2load
    total=$(awk '/^requests:/{print $2}' "$out")
    ok=$(awk '/^requests:/{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) print $i}' "$out")
    failed=$(awk '/^requests:/{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(failed|errored|timeout)/) s += $i; print s + 0}' "$out")
    s2xx=$(awk '/^status codes:/{print $3}' "$out")
    rps=$(awk '/^finished in/{gsub(",", ""); print $4}' "$out")
    # latency of the requests that started in the second after the rewrite, against the run
    around=$("$PY" - "$lg" "$t_rewrite" <<'PY'
import sys
t0 = int(sys.argv[2]) // 1000  # us
allv, near = [], []
for line in open(sys.argv[1]):
    p = line.split("\t")
    if len(p) < 3:
        continue
    start, us = int(p[0]), int(p[2])
    allv.append(us)
    if t0 <= start < t0 + 1_000_000:
        near.append(us)
def q(v, x):
    v = sorted(v)
    return v[max(0, -(-len(v) * x // 100) - 1)] if v else "-"
print(q(allv, 99), max(allv) if allv else "-", q(near, 99), max(near) if near else "-", len(near))
PY
)
    read -r p99_all max_all p99_near max_near n_near <<<"$around"
    non2xx=$(( ${total:-0} - ${s2xx:-0} ))
    say "h2load: rc $rc, ${rps:-?} req/s, requests ${ok:-?} succeeded of ${total:-?}, ${failed:-?} failed/errored/timeout, ${s2xx:-?} 2xx, non-2xx $non2xx (must be 0); waited ${waited}s for quiet"
    say "latency: whole run p99 ${p99_all} us (max ${max_all}); the ${n_near} requests started in the second after the rewrite: p99 ${p99_near} us (max ${max_near})"
    if [ -n "$t_seen" ]; then
        say "switch: rewrite -> /v1/status serves v2 after $(( (t_seen - t_rewrite) / 1000000 )) ms (watch interval ${SWITCH_WATCH_MS} ms and 10 ms status polling included)"
    else
        say "switch: v2 NOT served within 10 s of the rewrite"
    fi
    say "runtime /v1/status: version $(json_get "$st" 'd["model"]["version"]'), loads_ok $(json_get "$st" 'd["switch"]["loads_ok"]'), loads_failed $(json_get "$st" 'd["switch"]["loads_failed"]'), last_switch_ms $(json_get "$st" 'round(d["switch"]["last_switch_ms"], 1)') (load + warm-up + swap, on the loader thread)"
    stop switch
fi

say ""
say "req/s: h2load's figure over -D ${DURATION}s. p50/p99: request start to end of response (h2load --log-file),"
say "medians over rounds. cpu us/req: user+sys CPU of the server's process tree per request. others%cpu: CPU"
say "used by processes outside this benchmark during the run (noisy runs are retried twice, then kept and flagged)."
[ "${KEEP:-0}" = 1 ] && say "raw h2load output: $W/raw.txt"
exit 0
