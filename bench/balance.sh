#!/usr/bin/env bash
# bench/balance.sh - what the load-balancing policies cost: one modelgate per policy (round robin,
# least_request = power of two choices, consistent_hash on x-user-id) in front of the same 4
# backend pods, the same h2load loads, interleaved rounds; 127.0.0.1 only. See bench/README.md
# ("Load-balancing policies") for what is measured and how to read it.
#
#   bench/balance.sh                 3 interleaved rounds (about 3 minutes on a quiet box)
#   QUICK=1 bench/balance.sh         smoke run: 1 round, short runs (under a minute)
#   MODELGATE_BIN=/path/modelgate bench/balance.sh
#   PERF=1 bench/balance.sh          then one more thr run per policy under `perf record -g`
#
# Every server runs in its own session under a temp dir in /dev/shm, every h2load run is capped
# by `timeout`, and everything is stopped and removed on exit (KEEP=1 keeps the dir).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3 # Debian's: the helpers need nothing outside the standard library

# ---------------------------------------------------------------- knobs (environment)
if [ "${QUICK:-0}" = 1 ]; then
    d_rounds=1 d_dur=3 d_lat="-n 1000 -c 1 -m 1 -t 1" d_warm=1
else
    d_rounds=3 d_dur=10 d_lat="-n 10000 -c 1 -m 1 -t 1" d_warm=2
fi
ROUNDS=${ROUNDS:-$d_rounds}
DURATION=${DURATION:-$d_dur}             # seconds of each thr run (h2load -D)
WARM_DURATION=${WARM_DURATION:-$d_warm}   # untimed thr run per policy first
THR_CLIENTS=${THR_CLIENTS:-5}             # thr: this many h2load processes at once, each with its own x-user-id ...
THR_ARGS=${THR_ARGS:--c 10 -m 10 -t 1}    # ... and these arguments: 5 x 10 x 10 = 500 streams in flight, as bench/run.sh
LAT_ARGS=${LAT_ARGS:-$d_lat}              # lat: one h2load, one request in flight (x-user-id: u-1)
PROFILES=${PROFILES:-thr lat}
POLICIES=${POLICIES:-rr p2c ch}
PODS=${PODS:-4}
WORKERS=${WORKERS:-1}                     # gateway worker threads (1: one core, like bench/run.sh)
MODELGATE_BIN=${MODELGATE_BIN:-$ROOT/build/gateway/modelgate}
MODELGATE_ARGS=${MODELGATE_ARGS:-}        # extra gateway flags
PERF=${PERF:-0}                           # 1: after the rounds, one thr run per policy under perf record -g
PORT_BASE=${PORT_BASE:-19500}             # pods +1..+PODS, gateways and their admin ports +21..+26
QUIET_PCT=${QUIET_PCT:-10} # wait before each run until the machine is below this busy% ...
QUIET_MAX=${QUIET_MAX:-30} # ... but at most this many seconds
NOISY_PCT=${NOISY_PCT:-10} # a run during which others used > this % of one CPU is retried (twice)
# CPU layout, as bench/run.sh: thr gives the gateway a core of its own and puts h2load and the
# pods on the other; lat runs everything on one core. Empty = unpinned; PIN=0 pins nothing.
if [ "$(nproc)" -ge 2 ] && [ "${PIN:-1}" = 1 ]; then
    THR_LOADGEN=${THR_LOADGEN-0} THR_GATEWAY=${THR_GATEWAY-1} THR_BACKEND=${THR_BACKEND-0}
    LAT_LOADGEN=${LAT_LOADGEN-1} LAT_GATEWAY=${LAT_GATEWAY-1} LAT_BACKEND=${LAT_BACKEND-1}
else
    THR_LOADGEN='' THR_GATEWAY='' THR_BACKEND='' LAT_LOADGEN='' LAT_GATEWAY='' LAT_BACKEND=''
fi
RUN_TIMEOUT=${RUN_TIMEOUT:-$((DURATION + 60))} # hard cap (s) on each h2load run
HOST=digits-production.modelgate.local          # the route of the generated routing document
SERVICE=digits-production

declare -A POLICY=([rr]=round_robin [p2c]=least_request [ch]=consistent_hash)
declare -A GW_PORT=() ADMIN_PORT=()
i=0
for pol in rr p2c ch; do
    GW_PORT[$pol]=$((PORT_BASE + 21 + 2 * i)) ADMIN_PORT[$pol]=$((PORT_BASE + 22 + 2 * i))
    i=$((i + 1))
done
LOADGEN_CPUS=

# ---------------------------------------------------------------- plumbing
# say die start stop wait_port sess_ticks others_ticks our_sids wait_quiet pct need_tools, SID
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$HERE/lib.sh"
bench_workdir mg-balbench

pod_port() { echo $((PORT_BASE + $1)); }

# ---------------------------------------------------------------- setup
write_files() {
    local pol p pods="" hk
    # every pod answers every POST /v1/predict with this 95-byte JSON file (as bench/run.sh)
    mkdir -p "$W/htdocs/v1"
    printf '%s\n' '{"model":"digits","version":"v3","prediction":7,"scores":[0.01,0.02,0.9,0.07],"latency_us":42}' \
        >"$W/htdocs/v1/predict"
    printf '%s' '{"app":"digits","user_id":"u-12345","features":[0.1,0.2,0.3,0.4],"request_id":"r-1"}' \
        >"$W/req.json"
    for p in $(seq 1 "$PODS"); do pods+="${pods:+, }\"127.0.0.1:$(pod_port "$p")\""; done
    for pol in $POLICIES; do
        [ -n "${POLICY[$pol]:-}" ] || die "unknown policy $pol (known: rr p2c ch)"
        mkdir -p "$W/$pol"
        hk=
        [ "$pol" = ch ] && hk='"hash_key": "header:x-user-id", '
        cat >"$W/$pol/routes.json" <<EOF
{
  "domain": "modelgate.local",
  "services": {
    "$SERVICE": {"protocol": "h2c", "policy": "${POLICY[$pol]}", $hk"pods": [$pods]}
  },
  "routes": [{"app": "digits", "env": "production", "service": "$SERVICE"}]
}
EOF
        cat >"$W/$pol/gateway.json" <<EOF
{
  "listen": ["127.0.0.1:${GW_PORT[$pol]}"],
  "workers": $WORKERS,
  "routes": "routes.json",
  "access_log": "",
  "log_level": "warn",
  "admin": {"listen": "127.0.0.1:${ADMIN_PORT[$pol]}"}
}
EOF
    done
}

# sanity POLICY: one request through that gateway must return a pod's JSON
sanity() {
    local body
    body=$(timeout 10 nghttp -d "$W/req.json" -H 'content-type: application/json' \
        -H ":authority: $HOST" -H 'x-user-id: u-1' "http://127.0.0.1:${GW_PORT[$1]}/v1/predict" 2>&1)
    [[ $body == *'"prediction":7'* ]] && return 0
    say "bench: gateway $1 does not forward POST /v1/predict to the pods; got: ${body:0:300}"
    return 1
}

# layout PROFILE: pin h2load and re-pin every thread of every running server for that profile
layout() {
    if [ "$1" = lat ]; then
        pin_sessions "$LAT_LOADGEN" 'pod*' "$LAT_BACKEND" "$LAT_GATEWAY"
    else
        pin_sessions "$THR_LOADGEN" 'pod*' "$THR_BACKEND" "$THR_GATEWAY"
    fi
}

# pod_counts POLICY: requests each pod got from that gateway so far (every status class), one
# number per pod in pod order, from modelgate_pod_requests_total on its admin listener
pod_counts() {
    curl -s --max-time 5 -o "$W/metrics.$1" "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" || : >"$W/metrics.$1"
    "$PY" - "$W/metrics.$1" "$PODS" "$PORT_BASE" <<'PY' 2>/dev/null || echo "-"
import re, sys
pods, base = int(sys.argv[2]), int(sys.argv[3])
n = {}
for line in open(sys.argv[1]):
    m = re.match(r'modelgate_pod_requests_total\{.*pod="127\.0\.0\.1:(\d+)".*\} (\d+)', line)
    if m:
        n[int(m[1])] = n.get(int(m[1]), 0) + int(m[2])
print(" ".join(str(n.get(base + i, 0)) for i in range(1, pods + 1)))
PY
}
# pod_delta "A1 A2.." "B1 B2..": B - A per pod, as "n1/n2/.." and the largest share over the
# fair share ("1.00" = perfectly even)
pod_delta() {
    "$PY" - "$1" "$2" <<'PY' 2>/dev/null || echo "- -"
import sys
try:
    a = [int(x) for x in sys.argv[1].split()]
    b = [int(x) for x in sys.argv[2].split()]
except ValueError:
    print("- -"); sys.exit()
d = [y - x for x, y in zip(a, b)]
t = sum(d)
print("/".join(str(x) for x in d), f"{max(d) * len(d) / t:.2f}" if t else "-")
PY
}

# h2run POLICY PROFILE [DURATION]: one measured run (thr: THR_CLIENTS h2load processes at once,
# client i sending x-user-id: u-i; lat: one); prints
# "rps ok total non2xx p50_us p99_us gw_us_per_req pods_us_per_req foreign_pct status dist max/fair"
h2run() {
    local pol=$1 prof=$2 dur=${3:-$DURATION} n=1 k pids=() rc=0 c0 c1 t0 t1 b0 b1 o0 o1 w0 w1 s
    local url="http://127.0.0.1:${GW_PORT[$pol]}/v1/predict" args=$LAT_ARGS
    [ "$prof" = thr ] && n=$THR_CLIENTS args="-D $dur $THR_ARGS"
    rm -f "$W"/h2load.*.out "$W"/h2load.*.tsv
    c0=$(pod_counts "$pol")
    # shellcheck disable=SC2046
    o0=$(others_ticks $(our_sids)) t0=$(sess_ticks "${SID[gw-$pol]}") b0=$(pods_ticks)
    w0=$(date +%s%N)
    for k in $(seq 1 "$n"); do
        # shellcheck disable=SC2046,SC2086
        timeout -k 5 "$RUN_TIMEOUT" $(pin "$LOADGEN_CPUS") h2load $args \
            -H ":authority: $HOST" -H "x-user-id: u-$k" -H 'content-type: application/json' \
            -d "$W/req.json" --log-file="$W/h2load.$k.tsv" "$url" >"$W/h2load.$k.out" 2>&1 &
        pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || rc=$?; done
    w1=$(date +%s%N)
    # shellcheck disable=SC2046
    t1=$(sess_ticks "${SID[gw-$pol]}") b1=$(pods_ticks) o1=$(others_ticks $(our_sids))
    c1=$(pod_counts "$pol")
    for k in $(seq 1 "$n"); do
        { echo "=== $pol $prof client $k: h2load $args"; cat "$W/h2load.$k.out"; } >>"$W/raw.txt"
    done

    local rps ok total non2xx p50 p99 cnt gcpu bcpu foreign status=ok dist fair
    # sums over the clients; with -D every client measures the same window, so req/s add up
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
    kill -0 "${SID[gw-$pol]}" 2>/dev/null || status=died
    if [ "$status" = bad ]; then # stdout is the result line: explain on stderr
        local why="exit status $rc"
        [ "$rc" = 124 ] && why="stopped by timeout after ${RUN_TIMEOUT}s"
        say "bench: $pol $prof: h2load $why, $ok of $total requests succeeded, $non2xx non-2xx; h2load said:" >&2
        grep -hv '^progress' "$W"/h2load.*.out | tail -8 | sed 's/^/    /' >&2
    fi
    if [ "$status" != died ] && [ "$ok" -gt 0 ]; then
        gcpu=$("$PY" -c "print(f'{$(((t1 - t0) * TICK_US))/$ok:.2f}')")
        bcpu=$("$PY" -c "print(f'{$(((b1 - b0) * TICK_US))/$ok:.2f}')")
    else
        gcpu=- bcpu=-
    fi
    read -r dist fair < <(pod_delta "$c0" "$c1")
    # CPU that other processes used during the run, in % of one CPU (see bench/run.sh)
    foreign=$(((o1 - o0) * TICK_US * 100 / ((w1 - w0) / 1000 + 1)))
    [ "$status" = ok ] && [ "$foreign" -gt "$NOISY_PCT" ] && [ $((o1 - o0)) -gt 3 ] && status=noisy
    echo "$rps $ok $total $non2xx $p50 $p99 $gcpu $bcpu $foreign $status $dist $fair"
}
pods_ticks() { # CPU ticks of every pod, summed
    local p t=0
    for p in $(seq 1 "$PODS"); do t=$((t + $(sess_ticks "${SID[pod$p]}"))); done
    echo "$t"
}

# perf_run POLICY: one thr run with `perf record -g` on that gateway; prints its top symbols
perf_run() {
    local pol=$1 gpid data=$W/perf.$1.data
    gpid=$(pgrep -s "${SID[gw-$pol]}" -x modelgate | head -1)
    [ -n "$gpid" ] || return 0
    timeout -k 5 $((DURATION + 30)) perf record -q -g -p "$gpid" -o "$data" -- sleep "$DURATION" \
        >"$W/perf.$pol.out" 2>&1 &
    local ppid=$!
    sleep 0.2
    h2run "$pol" thr >/dev/null
    wait "$ppid"
    say ""
    say "## perf: gateway '$pol' (${POLICY[$pol]}), self time, top 25 symbols"
    timeout 120 perf report -q -i "$data" --no-children --sort symbol --percent-limit 0.7 \
        --stdio -g none 2>/dev/null | grep -v '^$' | head -25
    # the pick and the in-flight bookkeeping (routing/balance.c, routing/podstate.c, the caller's
    # pick_pod): self time, summed (without frame pointers -g does not see through inlined callers)
    timeout 120 perf report -q -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null |
        awk -v pol="$pol" '
        $3 ~ /^(mg_balance_|mg_podstate_|pick_|candidate_weights|effective_weight|weighted_draw|ring_lower_bound|rng_|mix64|fnv1a64|load_of)/ {
            sub("%", "", $1); t += $1; l = l sprintf(" %s %.2f%%", $3, $1) }
        END { printf "balancing code in %s: %.2f%% of the gateway samples:%s\n", pol, t, l }'
}

# ---------------------------------------------------------------- run
need_tools h2load nghttp nghttpd taskset timeout setsid pgrep ss curl "$PY"
[ "$PERF" = 1 ] && need_tools perf
[ -x "$MODELGATE_BIN" ] || die "$MODELGATE_BIN does not exist or is not executable; build it
       (cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build --target modelgate) or set MODELGATE_BIN"
if ! [ "$PODS" -ge 1 ] 2>/dev/null || [ "$PODS" -gt 20 ]; then die "PODS must be 1-20 (got $PODS)"; fi
for p in $(seq 1 "$PODS"); do
    ss -Hltn "sport = :$(pod_port "$p")" | grep -q . && die "port $(pod_port "$p") is in use (set PORT_BASE to another range)"
done
for pol in $POLICIES; do
    for p in "${GW_PORT[$pol]}" "${ADMIN_PORT[$pol]}"; do
        ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set PORT_BASE to another range)"
    done
done
write_files

say "# modelgate load-balancing policies, $(date -Is)"
say "# $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); $(h2load --version | head -1)"
say "# gateway: $MODELGATE_BIN --config gateway.json (workers $WORKERS) $MODELGATE_ARGS; $PODS pods: nghttpd h2c, 95-byte JSON file"
say "# policies: $(for pol in $POLICIES; do printf '%s=%s ' "$pol" "${POLICY[$pol]}"; done)(ch: hash_key header:x-user-id)"
say "# thr: $THR_CLIENTS x h2load -D $DURATION $THR_ARGS (client i sends x-user-id: u-i) | lat: h2load $LAT_ARGS (x-user-id: u-1) | rounds: $ROUNDS"
say "# pinning thr: h2load=[${THR_LOADGEN:-any}] gateway=[${THR_GATEWAY:-any}] pods=[${THR_BACKEND:-any}]; lat: h2load=[${LAT_LOADGEN:-any}] gateway=[${LAT_GATEWAY:-any}] pods=[${LAT_BACKEND:-any}]"

for p in $(seq 1 "$PODS"); do
    start "pod$p" "$THR_BACKEND" nghttpd --no-tls -a 127.0.0.1 -d "$W/htdocs" "$(pod_port "$p")"
done
for p in $(seq 1 "$PODS"); do
    wait_port "$(pod_port "$p")" 10 "pod$p" || die "pod $p (nghttpd) did not start: $(tail -5 "$W/pod$p.out")"
done
for pol in $POLICIES; do
    timeout 20 "$MODELGATE_BIN" --check-config "$W/$pol/gateway.json" >"$W/$pol/check.out" 2>&1 ||
        die "the generated config for $pol is refused: $(cat "$W/$pol/check.out")"
    # shellcheck disable=SC2086
    start "gw-$pol" "$THR_GATEWAY" "$MODELGATE_BIN" --config "$W/$pol/gateway.json" $MODELGATE_ARGS
    if ! wait_port "${GW_PORT[$pol]}" 10 "gw-$pol" || ! wait_port "${ADMIN_PORT[$pol]}" 10 "gw-$pol"; then
        die "gateway $pol did not listen on 127.0.0.1:${GW_PORT[$pol]} (admin ${ADMIN_PORT[$pol]}) within 10 s: $(tail -20 "$W/gw-$pol.out")"
    fi
    sanity "$pol" || die "gateway $pol answers wrong"
done

layout thr
for pol in $POLICIES; do
    h2run "$pol" thr "$WARM_DURATION" >/dev/null # untimed: upstream connections, caches, page faults
done

printf 'round\tprofile\tpolicy\trps\tok\ttotal\tnon2xx\tp50_us\tp99_us\tgw_us\tpods_us\tforeign_pct\tstatus\tdist\tfair\n' >"$W/runs.tsv"
say ""
say "round profile policy  req/s      ok/total          p50us   p99us  gw_us/req  pods_us/req  others%cpu  status  requests per pod (max/fair)"
for r in $(seq 1 "$ROUNDS"); do
    for prof in $PROFILES; do
        layout "$prof"
        for pol in $POLICIES; do # interleaved: RR P2C CH, RR P2C CH, ... so drift hits every policy
            for try in 0 1 2; do
                waited=$(wait_quiet)
                read -r rps ok total non2xx p50 p99 gcpu bcpu foreign status dist fair < <(h2run "$pol" "$prof")
                if [ "$status" != noisy ] || [ "$try" -ge 2 ]; then break; fi
                say "      $pol $prof: other processes used ${foreign}% of a CPU during the run (waited ${waited}s for quiet); retrying"
            done
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$prof" "$pol" "$rps" \
                "$ok" "$total" "$non2xx" "$p50" "$p99" "$gcpu" "$bcpu" "$foreign" "$status" "$dist" "$fair" >>"$W/runs.tsv"
            say "$(printf '%-5s %-7s %-7s %-10s %-17s %7s %7s %10s %12s %11s  %-6s  %s (%s)' "$r" "$prof" "$pol" \
                "$rps" "$ok/$total" "$p50" "$p99" "$gcpu" "$bcpu" "$foreign" "$status" "$dist" "$fair")"
            [ "$status" = died ] && die "gateway $pol exited during the run: $(tail -20 "$W/gw-$pol.out")"
        done
    done
done

say ""
say "## summary: medians over $ROUNDS round(s)"
PYTHONPATH="$HERE" "$PY" - "$W/runs.tsv" <<'PY'
import csv, statistics, sys

from tsv import read_rows, num, med, fmt

rows = read_rows(sys.argv[1])

agg, profiles, policies = {}, [], []
for r in rows:
    if r["profile"] not in profiles:
        profiles.append(r["profile"])
    if r["policy"] not in policies:
        policies.append(r["policy"])
    a = agg.setdefault((r["profile"], r["policy"]),
                       {"rps": [], "p50": [], "p99": [], "gw": [], "pods": [], "dist": None, "bad": 0, "noisy": 0})
    if r["status"] in ("bad", "died"):
        a["bad"] += 1
        continue
    a["noisy"] += r["status"] == "noisy"
    for k, col in (("rps", "rps"), ("p50", "p50_us"), ("p99", "p99_us"), ("gw", "gw_us"), ("pods", "pods_us")):
        a[k].append(num(r[col]))
    try:  # requests per pod, summed over the rounds
        d = [int(x) for x in r["dist"].split("/")]
        a["dist"] = d if a["dist"] is None else [x + y for x, y in zip(a["dist"], d)]
    except ValueError:
        pass

print(f"{'profile':8}{'policy':8}{'req/s':>10} {'min-max':>17} {'p50/p99 us':>12} {'gw us/req':>10} "
      f"{'pods us/req':>12} {'req/s vs rr':>12} {'gw cpu vs rr':>13}  requests per pod (% of the profile's total)  note")
for prof in profiles:
    rr = agg.get((prof, "rr"))
    for pol in policies:
        a = agg.get((prof, pol))
        if a is None:
            continue
        rps = [x for x in a["rps"] if x is not None]
        m = med(rps)
        mm = f"{min(rps):,.0f}-{max(rps):,.0f}" if rps else "-"
        p = f"{fmt(med(a['p50']), '.0f')}/{fmt(med(a['p99']), '.0f')}"
        vs = fmt(m / med(rr["rps"]), ".3f") if rr and m and med(rr["rps"]) else "-"
        cvs = fmt(med(a["gw"]) / med(rr["gw"]), ".3f") if rr and med(a["gw"]) and med(rr["gw"]) else "-"
        dist = "-"
        if a["dist"] and sum(a["dist"]):
            dist = "/".join(f"{100 * x / sum(a['dist']):.0f}" for x in a["dist"])
        note = []
        if a["bad"]:
            note.append(f"{a['bad']} failed run(s)")
        if a["noisy"]:
            note.append(f"{a['noisy']} noisy run(s)")
        if prof == "lat" and rr and pol != "rr" and med(a["p50"]) is not None and med(rr["p50"]) is not None:
            note.append(f"{med(a['p50']) - med(rr['p50']):+.0f} us p50 vs rr")
        print(f"{prof:8}{pol:8}{fmt(m, ',.0f'):>10} {mm:>17} {p:>12} {fmt(med(a['gw']), '.2f'):>10} "
              f"{fmt(med(a['pods']), '.2f'):>12} {vs:>12} {cvs:>13}  {dist:<44}  {'; '.join(note)}")
PY

if [ "$PERF" = 1 ]; then
    layout thr
    for pol in $POLICIES; do perf_run "$pol"; done
fi

say ""
say "thr = $THR_CLIENTS x h2load -D $DURATION $THR_ARGS at once (req/s summed); lat = h2load $LAT_ARGS."
say "p50/p99: request start to end of response, from h2load --log-file. gw us/req: user+sys CPU of the"
say "gateway per request; pods us/req: of the $PODS pods together. vs rr: the policy's median over round"
say "robin's (req/s: above 1 = faster; gw cpu: above 1 = costlier). Requests per pod: the gateway's"
say "modelgate_pod_requests_total, pods in port order. others%cpu: CPU used outside this benchmark."
[ "${KEEP:-0}" = 1 ] && say "raw h2load output: $W/raw.txt"
exit 0
