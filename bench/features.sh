#!/usr/bin/env bash
# bench/features.sh - what user features cost: modelgate with features off against features on
# (warm Redis, cold local cache: no request is answered from the worker's cache), the same
# routing document, the same backend, interleaved rounds; 127.0.0.1 only. See bench/README.md
# ("What user features cost") for what is measured and how to read it.
#
#   bench/features.sh                 3 interleaved rounds of 10 s thr runs + lat runs (~3 min)
#   QUICK=1 bench/features.sh         smoke run: 1 round, 3 s runs
#   BEFORE_BIN=/path/modelgate bench/features.sh
#                                     a third contestant, "before": features on with another
#                                     build (e.g. the previous commit), for before/after figures
#   PERF=1 bench/features.sh          then one thr run per gateway (off too) under perf record
#
# The gateways differ only in their "features" section. Every server runs in its own session
# under a temp dir in /dev/shm, every h2load run is capped by `timeout`, and everything is
# stopped and removed on exit (KEEP=1 keeps the dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3 # Debian's: the helpers need nothing outside the standard library

# ---------------------------------------------------------------- knobs (environment)
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_dur=3 d_lat="-n 2000 -c 1 -m 1 -t 1" d_warm=1
else
    d_rounds=3 d_dur=10 d_lat="-n 10000 -c 1 -m 1 -t 1" d_warm=2
fi
ROUNDS=${ROUNDS:-$d_rounds}
DURATION=${DURATION:-$d_dur}           # seconds of each thr run (h2load -D)
WARM_DURATION=${WARM_DURATION:-$d_warm} # untimed thr run per gateway first
USERS=${USERS:-10}                      # thr: this many h2load processes, client i sends x-user-id: user<i>
THR_ARGS=${THR_ARGS:--c 2 -m 5 -t 1}    # ... each with these arguments (10 x 2 x 5 = 100 streams in flight)
LAT_ARGS=${LAT_ARGS:-$d_lat}            # lat: one h2load, one request in flight, x-user-id: user0
PROFILES=${PROFILES:-thr lat}
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
BEFORE_BIN=${BEFORE_BIN:-}              # optional: contestant "before" = features on with this binary
PERF=${PERF:-0}
PORT_BASE=${PORT_BASE:-19200}           # backend +1, Redis +2, gateways +3..+5, their admin ports +6..+8
QUIET_PCT=${QUIET_PCT:-10} # wait before each run until the machine is below this busy% ...
QUIET_MAX=${QUIET_MAX:-30} # ... but at most this many seconds
NOISY_PCT=${NOISY_PCT:-10} # a run during which others used > this % of one CPU is retried (twice)
# CPU layout, as bench/balance.sh: thr gives the gateway a core of its own and puts h2load, the
# backend and Redis on the other (in a deployment Redis runs elsewhere); lat runs everything on
# one core. Empty = unpinned; PIN=0 pins nothing.
if [ "$(nproc)" -ge 2 ] && [ "${PIN:-1}" = 1 ]; then
    THR_LOADGEN=${THR_LOADGEN-0} THR_GATEWAY=${THR_GATEWAY-1} THR_BACKEND=${THR_BACKEND-0}
    LAT_LOADGEN=${LAT_LOADGEN-1} LAT_GATEWAY=${LAT_GATEWAY-1} LAT_BACKEND=${LAT_BACKEND-1}
else
    THR_LOADGEN='' THR_GATEWAY='' THR_BACKEND='' LAT_LOADGEN='' LAT_GATEWAY='' LAT_BACKEND=''
fi
RUN_TIMEOUT=${RUN_TIMEOUT:-$((DURATION + 60))}
HOST=bench-production.modelgate.local
BE_PORT=$((PORT_BASE + 1)) REDIS_PORT=$((PORT_BASE + 2))
GWS="off on"
[ -n "$BEFORE_BIN" ] && GWS="off on before"
declare -A GW_PORT=([off]=$((PORT_BASE + 3)) [on]=$((PORT_BASE + 4)) [before]=$((PORT_BASE + 5)))
declare -A ADMIN_PORT=([off]=$((PORT_BASE + 6)) [on]=$((PORT_BASE + 7)) [before]=$((PORT_BASE + 8)))
declare -A GW_BIN=([off]=$MODELGATE_BIN [on]=$MODELGATE_BIN [before]=$BEFORE_BIN)
LOADGEN_CPUS=

# ---------------------------------------------------------------- plumbing
# say die start stop wait_port sess_ticks others_ticks our_sids wait_quiet pct need_tools, SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-fbench

# ---------------------------------------------------------------- setup
write_files() {
    local gw feats
    mkdir -p "$W/htdocs/v1"
    printf '%s\n' '{"prediction":7,"probabilities":[0.01,0.02,0.9],"model_version":"digits-v3","ms":0.2}' \
        >"$W/htdocs/v1/predict"
    printf '%s' '{"inputs":[[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3]]}' >"$W/body.json"
    for gw in $GWS; do
        mkdir -p "$W/$gw"
        cat >"$W/$gw/routes.json" <<JSON
{"domain": "modelgate.local", "services": {"svc": {"protocol": "h2c", "pods": ["127.0.0.1:$BE_PORT"]}},
 "routes": [{"app": "bench", "env": "production", "service": "svc"}]}
JSON
        feats=
        # local.ttl_ms 0 (and no stale or negative entries): the worker's cache answers nothing
        [ "$gw" != off ] && feats=',
 "features": {"redis": {"host": "127.0.0.1", "port": '$REDIS_PORT'},
   "local": {"ttl_ms": 0, "stale_ms": 0, "negative_ttl_ms": 0},
   "apps": {"bench": {"timeout_ms": 50, "groups": [{"name": "profile", "type": "hash"},
            {"name": "recent", "type": "list", "max_items": 50}]}}}'
        cat >"$W/$gw/gateway.json" <<JSON
{"listen": ["127.0.0.1:${GW_PORT[$gw]}"], "workers": 1, "routes": "routes.json", "access_log": "",
 "log_level": "warn", "admin": {"listen": "127.0.0.1:${ADMIN_PORT[$gw]}"}$feats}
JSON
    done
}

# warm Redis: users 0..USERS have a profile hash (4 fields) and 50 recent items (~600 bytes of JSON)
fill_redis() {
    local u k
    for u in $(seq 0 "$USERS"); do
        k="mgf:v1:bench:user$u"
        printf 'HSET %s:profile age 31 country fr plan pro segment s17\n' "$k"
        printf 'RPUSH %s:recent %s\n' "$k" "$(seq -f 'item%06g' 1000 1049 | tr '\n' ' ')"
        printf 'SET %s 1\n' "$k"
    done | redis-cli -p "$REDIS_PORT" >/dev/null || die "cannot fill Redis"
}

# metric GW NAME-REGEX: sum of the matching samples on that gateway's /metrics (0 when none)
metric() {
    curl -s --max-time 5 "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" |
        awk -v re="$2" '$1 ~ re { s += $2 } END { printf "%d\n", s }'
}
# features counters of GW: "requests redis_lookups coalesced hits"
fcounters() {
    curl -s --max-time 5 "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" | awk '
        /^modelgate_features_requests_total/ { r += $2 }
        /^modelgate_features_requests_total\{status="hit"\}/ { h += $2 }
        /^modelgate_features_layer_total\{layer="redis"/ { l += $2 }
        /^modelgate_features_coalesced_total\{layer="worker"\}/ { c += $2 }
        END { printf "%d %d %d %d\n", r, l, c, h }'
}

# sanity GW: one request must come back from the backend, and on the features-on gateways it
# must have had its features attached
sanity() {
    local body h0 h1
    read -r _ _ _ h0 < <(fcounters "$1")
    body=$(timeout 10 nghttp -d "$W/body.json" -H 'content-type: application/json' \
        -H ":authority: $HOST" -H 'x-user-id: user1' "http://127.0.0.1:${GW_PORT[$1]}/v1/predict" 2>&1)
    [[ $body == *'"prediction":7'* ]] || die "gateway $1 does not forward POST /v1/predict: ${body:0:300}"
    [ "$1" = off ] && return 0
    read -r _ _ _ h1 < <(fcounters "$1")
    [ "$h1" -gt "$h0" ] || die "gateway $1 did not attach features (hits $h0 -> $h1): $(tail -5 "$W/gw-$1.out")"
}

# layout PROFILE: pin h2load and re-pin every thread of every running server for that profile
layout() {
    if [ "$1" = thr ]; then
        pin_sessions "$THR_LOADGEN" 'gw-*' "$THR_GATEWAY" "$THR_BACKEND"
        if [ -n "${THR_REDIS:-}" ]; then
            for p in $(pgrep -s "${SID[redis]}"); do taskset -a -p -c "$THR_REDIS" "$p" >/dev/null 2>&1; done
        fi
    else
        pin_sessions "$LAT_LOADGEN" 'gw-*' "$LAT_GATEWAY" "$LAT_BACKEND"
    fi
}

# h2run GW PROFILE [DURATION]: one measured run; prints
# "rps ok total p50 p99 gw_us redis_us pod_us lookups_per_req coalesced_pct foreign_pct status"
h2run() {
    local gw=$1 prof=$2 dur=${3:-$DURATION} n=1 k pids=() rc=0 args=$LAT_ARGS
    local t0 t1 r0 r1 b0 b1 o0 o1 w0 w1 f0 f1
    local url="http://127.0.0.1:${GW_PORT[$gw]}/v1/predict"
    [ "$prof" = thr ] && n=$USERS args="-D $dur $THR_ARGS"
    rm -f "$W"/h2load.*.out "$W"/h2load.*.tsv
    f0=$(fcounters "$gw")
    # shellcheck disable=SC2046
    o0=$(others_ticks $(our_sids)) t0=$(sess_ticks "${SID[gw-$gw]}") r0=$(sess_ticks "${SID[redis]}")
    b0=$(sess_ticks "${SID[backend]}")
    w0=$(date +%s%N)
    for k in $(seq 1 "$n"); do
        [ "$prof" = lat ] && k=0
        # shellcheck disable=SC2046,SC2086
        timeout -k 5 "$RUN_TIMEOUT" $(pin "$LOADGEN_CPUS") h2load $args \
            -H ":authority: $HOST" -H "x-user-id: user$k" -H 'content-type: application/json' \
            -d "$W/body.json" --log-file="$W/h2load.$k.tsv" "$url" >"$W/h2load.$k.out" 2>&1 &
        pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || rc=$?; done
    w1=$(date +%s%N)
    # shellcheck disable=SC2046
    t1=$(sess_ticks "${SID[gw-$gw]}") r1=$(sess_ticks "${SID[redis]}") o1=$(others_ticks $(our_sids))
    b1=$(sess_ticks "${SID[backend]}")
    f1=$(fcounters "$gw")
    for k in "$W"/h2load.*.out; do
        { echo "=== $gw $prof $k: h2load $args"; cat "$k"; } >>"$W/raw.txt"
    done
    local rps ok total non2xx p50 p99 cnt s status=ok gcpu rcpu bcpu lpr cpct
    read -r rps ok total non2xx < <(awk '
        /^finished in/ { gsub(",", ""); rps += $4 }
        /^requests:/ { total += $2; for (i = 1; i < NF; i++) if ($(i + 1) ~ /^succeeded/) ok += $i }
        /^status codes:/ { bad += $5 + $7 + $9 }
        END { printf "%.2f %d %d %d\n", rps, ok, total, bad }' "$W"/h2load.*.out)
    cat "$W"/h2load.*.tsv >"$W/h2load.tsv" 2>/dev/null
    read -r p50 p99 cnt < <(pct "$W/h2load.tsv" 2>/dev/null || echo "- - 0")
    s=$(cat "$W"/h2load.*.out | grep -c '^finished in')
    [ "$rc" = 0 ] && [ "$s" = "$n" ] && [ "$ok" -gt 0 ] && [ "$ok" = "$total" ] &&
        [ "$non2xx" = 0 ] && [ "$cnt" -ge "$ok" ] || status=bad
    kill -0 "${SID[gw-$gw]}" 2>/dev/null || status=died
    if [ "$status" = bad ]; then # stdout is the result line: explain on stderr
        say "bench: $gw $prof: h2load exit status $rc, $ok of $total requests succeeded, $non2xx non-2xx; h2load said:" >&2
        grep -hv '^progress' "$W"/h2load.*.out | tail -8 | sed 's/^/    /' >&2
    fi
    # shellcheck disable=SC2086 # f0, f1: four numbers each
    read -r gcpu rcpu bcpu lpr cpct < <("$PY" - "$ok" $((t1 - t0)) $((r1 - r0)) $((b1 - b0)) "$TICK_US" $f0 $f1 <<'PY'
import sys
ok, gt, rt, bt, tick = (int(x) for x in sys.argv[1:6])
r0, l0, c0, _, r1, l1, c1, _ = (int(x) for x in sys.argv[6:14])
req = r1 - r0
print(*(f"{t * tick / ok:.2f}" if ok else "-" for t in (gt, rt, bt)),
      f"{(l1 - l0) / req:.3f}" if req else "-", f"{100 * (c1 - c0) / req:.1f}" if req else "-")
PY
)
    local foreign=$(((o1 - o0) * TICK_US * 100 / ((w1 - w0) / 1000 + 1)))
    [ "$status" = ok ] && [ "$foreign" -gt "$NOISY_PCT" ] && [ $((o1 - o0)) -gt 3 ] && status=noisy
    echo "$rps $ok $total $p50 $p99 $gcpu $rcpu $bcpu $lpr $cpct $foreign $status"
}

# perf_run GW: one thr run with `perf record -g` on that gateway; prints where its time goes
perf_run() {
    local gw=$1 gpid data=$W/perf.$1.data ppid
    gpid=$(pgrep -s "${SID[gw-$gw]}" -x modelgate | head -1)
    [ -n "$gpid" ] || return 0
    timeout -k 5 $((DURATION + 30)) perf record -q -g -p "$gpid" -o "$data" -- sleep "$DURATION" \
        >"$W/perf.$gw.out" 2>&1 &
    ppid=$!
    sleep 0.2
    h2run "$gw" thr >/dev/null
    wait "$ppid"
    say ""
    say "## perf: gateway '$gw', self time by library, then the top symbols"
    timeout 120 perf report -q -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^$' | head -12
    timeout 120 perf report -q -i "$data" --no-children --sort dso,symbol --percent-limit 0.6 \
        --stdio -g none 2>/dev/null | grep -v '^$' | head -40
}

# ---------------------------------------------------------------- run
need_tools h2load nghttp nghttpd redis-server redis-cli taskset timeout setsid pgrep ss curl "$PY"
[ "$PERF" = 1 ] && need_tools perf
for gw in $GWS; do
    [ -x "${GW_BIN[$gw]}" ] || die "${GW_BIN[$gw]} does not exist or is not executable; build it
       (cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build --target modelgate) or set MODELGATE_BIN"
done
for p in "$BE_PORT" "$REDIS_PORT" "${GW_PORT[@]}" "${ADMIN_PORT[@]}"; do
    ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set PORT_BASE to another range)"
done
write_files

say "# modelgate user features: off / on, $(date -Is)"
say "# $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); $(h2load --version | head -1); $(redis-server --version | cut -d' ' -f1-3)"
say "# gateways (workers 1): $(for gw in $GWS; do printf '%s=%s ' "$gw" "${GW_BIN[$gw]}"; done)"
say "# features on: Redis 127.0.0.1:$REDIS_PORT, groups profile (hash, 4 fields) + recent (list, 50 items), local ttl_ms 0"
say "# thr: $USERS x h2load -D $DURATION $THR_ARGS (client i sends x-user-id: user<i>) | lat: h2load $LAT_ARGS (user0) | rounds: $ROUNDS"
say "# pinning thr: h2load=[${THR_LOADGEN:-any}] gateway=[${THR_GATEWAY:-any}] backend+redis=[${THR_BACKEND:-any}]; lat: h2load=[${LAT_LOADGEN:-any}] gateway=[${LAT_GATEWAY:-any}] backend+redis=[${LAT_BACKEND:-any}]"

start backend "$THR_BACKEND" nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "$BE_PORT"
start redis "$THR_BACKEND" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
wait_port "$BE_PORT" 10 backend || die "nghttpd did not start: $(tail -5 "$W/backend.out")"
wait_port "$REDIS_PORT" 10 redis || die "redis-server did not start: $(tail -5 "$W/redis.out")"
fill_redis
for gw in $GWS; do
    timeout 20 "${GW_BIN[$gw]}" --check-config "$W/$gw/gateway.json" >"$W/$gw/check.out" 2>&1 ||
        die "the generated config for $gw is refused: $(cat "$W/$gw/check.out")"
    start "gw-$gw" "$THR_GATEWAY" "${GW_BIN[$gw]}" --config "$W/$gw/gateway.json"
    if ! wait_port "${GW_PORT[$gw]}" 10 "gw-$gw" || ! wait_port "${ADMIN_PORT[$gw]}" 10 "gw-$gw"; then
        die "gateway $gw did not listen within 10 s: $(tail -20 "$W/gw-$gw.out")"
    fi
done
for gw in $GWS; do # the features worker connects to Redis asynchronously
    [ "$gw" = off ] && continue
    for _ in $(seq 1 50); do [ "$(metric "$gw" '^modelgate_features_redis_up')" -ge 1 ] && break; sleep 0.1; done
done
for gw in $GWS; do sanity "$gw"; done

layout thr
for gw in $GWS; do h2run "$gw" thr "$WARM_DURATION" >/dev/null; done

printf 'round\tprofile\tgw\trps\tok\ttotal\tp50\tp99\tgw_us\tredis_us\tpod_us\tlookups\tcoalesced\tforeign\tstatus\n' >"$W/runs.tsv"
say ""
say "round profile gw      req/s      ok/total           p50us  p99us  gw_us/req  redis_us/req  pod_us/req  lookups/req  coalesced%  others%cpu  status"
for r in $(seq 1 "$ROUNDS"); do
    for prof in $PROFILES; do
        layout "$prof"
        for gw in $GWS; do # interleaved: off on [before], off on ... so drift hits all alike
            for try in 0 1 2; do
                waited=$(wait_quiet)
                read -r rps ok total p50 p99 gcpu rcpu bcpu lpr cpct foreign status < <(h2run "$gw" "$prof")
                if [ "$status" != noisy ] || [ "$try" -ge 2 ]; then break; fi
                say "      $gw $prof: other processes used ${foreign}% of a CPU during the run (waited ${waited}s for quiet); retrying"
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$prof" "$gw" "$rps" "$ok" \
                "$total" "$p50" "$p99" "$gcpu" "$rcpu" "$bcpu" "$lpr" "$cpct" "$foreign" "$status" >>"$W/runs.tsv"
            say "$(printf '%-5s %-7s %-7s %-10s %-18s %6s %6s %10s %13s %11s %12s %11s %11s  %s' "$r" "$prof" "$gw" \
                "$rps" "$ok/$total" "$p50" "$p99" "$gcpu" "$rcpu" "$bcpu" "$lpr" "$cpct" "$foreign" "$status")"
            [ "$status" = died ] && die "gateway $gw exited during the run: $(tail -20 "$W/gw-$gw.out")"
        done
    done
done

say ""
say "## summary: medians over $ROUNDS round(s); ratios are medians of the per-round ratios (paired runs)"
PYTHONPATH="$HERE" "$PY" - "$W/runs.tsv" <<'PY'
import csv, statistics, sys

from tsv import read_rows, num, med, fmt as f

rows = read_rows(sys.argv[1])
by = {}
for r in rows:
    by.setdefault((r["profile"], r["gw"]), []).append(r)
def per_round(prof, gw, col):
    return {r["round"]: num(r[col]) for r in by.get((prof, gw), [])}
gws = []
for r in rows:
    if r["gw"] not in gws:
        gws.append(r["gw"])
print("gw       thr req/s          min-max  gw us/req  redis us/req  pod us/req  lookups/req  coalesced%  lat p50/p99 us  noisy")
for gw in gws:
    t, l = by.get(("thr", gw), []), by.get(("lat", gw), [])
    rps = [num(r["rps"]) for r in t]
    noisy = sum(r["status"] != "ok" for r in t + l)
    print(f"{gw:<7} {f(med(rps), ',.0f'):>10} {f(min(rps, default=None), ',.0f'):>9}-{f(max(rps, default=None), ',.0f'):<8}"
          f" {f(med([num(r['gw_us']) for r in t]), '.2f'):>9} {f(med([num(r['redis_us']) for r in t]), '.2f'):>13}"
          f" {f(med([num(r['pod_us']) for r in t]), '.2f'):>11}"
          f" {f(med([num(r['lookups']) for r in t]), '.3f'):>12} {f(med([num(r['coalesced']) for r in t]), '.1f'):>11}"
          f" {f(med([num(r['p50']) for r in l]), '.0f'):>8}/{f(med([num(r['p99']) for r in l]), '.0f'):<6} {noisy}")
print()
for gw in gws:
    if gw == "off":
        continue
    def ratio(prof, col):
        a, b = per_round(prof, gw, col), per_round(prof, "off", col)
        return [a[k] / b[k] for k in a if a[k] and b.get(k)]
    def diff(prof, col):
        a, b = per_round(prof, gw, col), per_round(prof, "off", col)
        return [a[k] - b[k] for k in a if a[k] is not None and b.get(k) is not None]
    rr, cr, dp = ratio("thr", "rps"), ratio("thr", "gw_us"), diff("lat", "p50")
    dcpu = diff("thr", "gw_us")
    print(f"{gw} vs off: req/s {f(med(rr), '.3f')} (rounds: {' '.join(format(x, '.3f') for x in rr)}; target > 0.90), "
          f"gateway CPU/req {f(med(cr), '.3f')} (+{f(med(dcpu), '.2f')} us), "
          f"added p50 {f(None if med(dp) is None else med(dp) / 1000, '.3f')} ms (target < 0.3 ms)")
PY

if [ "$PERF" = 1 ]; then
    layout thr
    for gw in $GWS; do perf_run "$gw"; done
fi
