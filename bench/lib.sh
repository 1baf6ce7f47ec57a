# shellcheck shell=bash
# bench/lib.sh - helpers shared by the benchmark scripts (run.sh, runtime.sh, balance.sh).
# Sourced, never run. The caller sets, before sourcing:
#   ROOT        the repository root (scripts/install-deps.sh is found there)
#   PY          the Python 3 interpreter the helpers run (standard library only)
# and, before calling wait_quiet, QUIET_PCT and QUIET_MAX. Sourcing declares SID (server name ->
# session id of its session leader), MY_SID and TICK_US; bench_workdir creates the work dir W and
# installs the exit trap that stops every server in SID and removes W (KEEP=1 keeps it).

declare -A SID=() # server name -> session id (= pid of the session leader)

say() { printf '%s\n' "$*"; }
die() { say "bench: FATAL: $*" >&2; exit 1; }

# bench_workdir PREFIX: creates W=/dev/shm/PREFIX.XXXXXX and the traps that clean up on exit
bench_workdir() {
    W=$(mktemp -d "/dev/shm/$1.XXXXXX") || die "cannot create a work dir in /dev/shm"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
# shellcheck disable=SC2317 # called through trap
cleanup() {
    local n
    for n in "${!SID[@]}"; do stop "$n"; done
    if [ "${KEEP:-0}" = 1 ]; then say "(work dir kept: $W)"; else rm -rf "$W"; fi
}

pin() { [ -n "$1" ] && echo "taskset -c $1"; }

# start NAME CPUS CMD...: in its own session, so its whole process tree can be measured and
# stopped by one id. Output goes to $W/NAME.out.
start() {
    local name=$1 cpus=$2
    shift 2
    # shellcheck disable=SC2046
    setsid $(pin "$cpus") "$@" >"$W/$name.out" 2>&1 </dev/null &
    SID[$name]=$!
}
stop() {
    local name=$1 p=${SID[$1]:-} _
    [ -z "$p" ] && return 0
    kill -TERM -- "-$p" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null
    wait "$p" 2>/dev/null
    unset "SID[$name]"
}
wait_port() { # PORT SECONDS [NAME]: gives up early when NAME's process has exited
    local _
    for _ in $(seq 1 $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        [ -n "${3:-}" ] && ! kill -0 "${SID[$3]}" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}
# CPU ticks (utime + stime) in the /proc stat files $@ (processes or threads); those gone meanwhile
# count nothing
stat_ticks() {
    local t=0 s f
    for s in "$@"; do
        f=$(cat "$s" 2>/dev/null) || continue
        f=${f##*) } # comm may contain spaces: cut after its closing parenthesis
        # shellcheck disable=SC2086
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}
# CPU ticks of every process in session $1
sess_ticks() {
    local p files=()
    for p in $(pgrep -s "$1"); do files+=("/proc/$p/stat"); done
    stat_ticks "${files[@]}"
}
# CPU ticks used so far by every process outside our sessions ($@) and outside the kernel's own
# threads (loopback TCP work done in ksoftirqd is caused by us). Reaped children count through
# their parent's cutime/cstime, so short-lived processes (compilers) are not missed.
others_ticks() {
    "$PY" - "$@" <<'PY'
import os, sys
ours = set(sys.argv[1:])
t = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        continue  # exited meanwhile
    f = s[s.rfind(")") + 2:].split()
    ppid, sid = f[1], f[3]
    if sid in ours or pid == "2" or ppid == "2":
        continue
    t += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
print(t)
PY
}
MY_SID=$(ps -o sid= -p $$ | tr -d ' ')
our_sids() { echo "$MY_SID" "${SID[@]}"; }
# shellcheck disable=SC2034 # used by the callers
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# waits until the machine is below QUIET_PCT% busy (it may be shared), at most QUIET_MAX s;
# prints the seconds waited
wait_quiet() {
    local t=0 a b
    while [ "$t" -lt "$QUIET_MAX" ]; do
        a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
        sleep 1
        b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
        t=$((t + 1))
        echo "$a $b" | awk -v q="$QUIET_PCT" '{exit !(100 * ($3 - $1) < q * ($4 - $2))}' && break
    done
    echo "$t"
}

# pct FILE: p50 p99 count of column 3 (microseconds to the end of the response) of an h2load
# --log-file
pct() {
    "$PY" - "$1" <<'PY'
import sys
v = []
with open(sys.argv[1]) as f:
    for line in f:
        p = line.split("\t")
        if len(p) >= 3:
            v.append(int(p[2]))
v.sort()
def q(x):  # nearest rank
    return v[max(0, -(-len(v) * x // 100) - 1)] if v else "-"
print(q(50), q(99), len(v))
PY
}

# need_tools CMD... [-- MISSING...]: every CMD (a name in PATH or an absolute path) must be
# there; MISSING are things the caller already found missing (e.g. Python modules). When
# anything is missing, says what and runs scripts/install-deps.sh.
need_tools() {
    local miss=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        command -v "$1" >/dev/null || miss+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    miss+=("$@")
    [ ${#miss[@]} -eq 0 ] && return 0
    say "bench: missing ${miss[*]}: running scripts/install-deps.sh"
    "$ROOT/scripts/install-deps.sh" || die "could not install the tools"
}

# pin_sessions LOADGEN_CPUS GLOB MATCH_CPUS OTHER_CPUS: h2load will run on LOADGEN_CPUS; every
# thread of every running server session whose name matches GLOB goes on MATCH_CPUS, the others
# on OTHER_CPUS (an empty list = every CPU, i.e. unpinned)
pin_sessions() {
    local glob=$2 n cpus p
    # shellcheck disable=SC2034 # read by the scripts' h2run
    LOADGEN_CPUS=$1
    for n in "${!SID[@]}"; do
        cpus=$4
        # shellcheck disable=SC2053 # GLOB is a pattern on purpose
        [[ $n == $glob ]] && cpus=$3
        [ -z "$cpus" ] && cpus=0-$(($(nproc) - 1))
        for p in $(pgrep -s "${SID[$n]}"); do taskset -a -p -c "$cpus" "$p" >/dev/null 2>&1; done
    done
}
