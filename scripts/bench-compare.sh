#!/usr/bin/env bash
# Side-by-side benchmark of two trees, in one run:
#
#   scripts/bench-compare.sh [BEFORE [AFTER]]
#
# BEFORE defaults to b727cfc (the parent of 6bea01e, issue 10's quota commit),
# AFTER to HEAD. Each tree is checked out in its own git worktree under
# target/bench-compare/tree-<sha> and built there in release (its own
# target/, seeded from an already built tree with the workspace crates'
# fingerprints removed, so only those are recompiled). Then the same commands,
#
#   cargo bench -p hive-core --bench messaging
#   HIVE_BENCH_NO_WRITE=1 cargo bench -p hive-web --bench dashboard
#
# run in both trees interleaved: round 1 is BEFORE then AFTER, round 2 AFTER
# then BEFORE, and so on, so a neighbour's compile or the host's steal lands
# on both sides alike. It prints the median of each figure per tree and the
# ratio AFTER/BEFORE, with the load average and the CPU stolen during every
# run, and (unless BENCH_NO_WRITE=1) rewrites the block between the
# bench-compare markers in docs/perf.md.
#
# Knobs (env): BENCH_ROUNDS (3; each round runs every bench once per tree),
# BENCH_BENCHES ("messaging dashboard"), BENCH_NO_WRITE=1 (print only),
# HIVE_BENCH_SECONDS / HIVE_BENCH_AGENTS / HIVE_BENCH_CONNECTIONS (passed to
# the dashboard bench). Logs of every run: target/bench-compare/run-*/.
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"
rounds=${BENCH_ROUNDS:-3}
benches=${BENCH_BENCHES:-messaging dashboard}
case $rounds in
'' | *[!0-9]*) echo "BENCH_ROUNDS must be a number, not '$rounds'" >&2 && exit 2 ;;
esac
[ "$rounds" -ge 1 ] || { echo "BENCH_ROUNDS must be at least 1" >&2; exit 2; }
for b in $benches; do
    case $b in
    messaging | dashboard) ;;
    *) echo "unknown bench '$b' (messaging, dashboard)" >&2 && exit 2 ;;
    esac
done

resolve() {
    git rev-parse --verify --quiet "$1^{commit}" >/dev/null ||
        { echo "'$1' is not a commit here" >&2; exit 2; }
    git rev-parse --short=7 "$1^{commit}"
}
before=$(resolve "${1:-b727cfc}")
after=$(resolve "${2:-HEAD}")
[ "$before" != "$after" ] || { echo "BEFORE and AFTER are the same commit ($before)" >&2; exit 2; }

base=$root/target/bench-compare
out=$base/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

tree() { echo "$base/tree-$1"; }

# A built tree's target/ to seed a new one from (registry crates are the same
# in both when Cargo.lock is; cargo rebuilds the workspace's own crates).
seed_for() {
    local d
    for d in "$base"/tree-*/target/release; do
        [ -d "$d" ] && [ "$d" != "$(tree "$1")/target/release" ] && { dirname "$d"; return; }
    done
    return 0
}

build() {
    local sha=$1 dir
    dir=$(tree "$sha")
    if [ ! -d "$dir" ]; then
        git worktree add --detach "$dir" "$sha" >/dev/null
    fi
    if [ ! -d "$dir/target/release" ]; then
        local seed
        seed=$(seed_for "$sha")
        if [ -n "$seed" ]; then
            echo "seeding $dir/target from $seed"
            mkdir -p "$dir/target"
            cp -a "$seed/release" "$dir/target/"
            # Cargo fingerprints the workspace's own crates by paths relative
            # to the workspace and by mtimes, so the copied artifacts of the
            # other tree would pass as fresh here: drop their fingerprints
            # (every workspace crate is named hive-*) so they are rebuilt.
            rm -rf "$dir/target/release/.fingerprint/"hive-*
        fi
    fi
    echo "building $sha (release) in $dir"
    (
        cd "$dir"
        # Exactly the invocations the runs make: cargo unifies features per
        # invocation (dev-dependencies included for benches), so one combined
        # build would leave each run to rebuild its own variant first.
        cargo bench --locked --no-run -q -p hive-core --bench messaging
        cargo bench --locked --no-run -q -p hive-web --bench dashboard
        cargo build --locked --release -p hive-core --bin hive-core -p hive-proto --bin hive-agent
    ) >"$out/build-$sha.log" 2>&1 || {
        tail -40 "$out/build-$sha.log" >&2
        echo "build of $sha failed (log: $out/build-$sha.log)" >&2
        exit 1
    }
}

steal_ticks() { awk '/^cpu /{print $9}' /proc/stat; }
load1() { cut -d' ' -f1 /proc/loadavg; }
tick_ms=$((1000 / $(getconf CLK_TCK)))

# wrk's units (us, ms, s) to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "%s", v
    }'
}

# value METRIC: appends one figure to target/.../values/<sha>/<metric>.
record() { mkdir -p "$out/values/$1" && echo "$3" >>"$out/values/$1/$2"; }

# Table cell of the dashboard section's row whose first cell is $2.
cell() { awk -F'|' -v k="$2" '{ f = $2; gsub(/^ +| +$/, "", f) } f == k { v = $3; gsub(/^ +| +$/, "", v); print v; exit }' "$1"; }

run_one() {
    local sha=$1 bench=$2 round=$3 dir log s0 s1 l0
    dir=$(tree "$sha")
    log=$out/$bench-$sha-$round.log
    l0=$(load1)
    s0=$(steal_ticks)
    case $bench in
    messaging) (cd "$dir" && cargo bench --locked -q -p hive-core --bench messaging) >"$log" 2>&1 ;;
    dashboard) (cd "$dir" && HIVE_BENCH_NO_WRITE=1 cargo bench --locked -q -p hive-web --bench dashboard) >"$log" 2>&1 ;;
    esac || {
        tail -40 "$log" >&2
        echo "$bench on $sha failed in round $round (log: $log)" >&2
        exit 1
    }
    s1=$(steal_ticks)
    local steal=$(((s1 - s0) * tick_ms))
    local figures
    case $bench in
    messaging)
        local p50 p99 tput
        read -r p50 p99 < <(sed -n 's/^send->push latency ([^)]*): p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/\1 \2/p' "$log") || true
        tput=$(sed -n 's/^durable throughput ([^)]*): \([0-9]*\) msgs\/s acked and pushed.*/\1/p' "$log")
        [ -n "${p50:-}" ] && [ -n "${tput:-}" ] || { echo "no figures in $log" >&2; exit 1; }
        record "$sha" msg_p50 "$p50"
        record "$sha" msg_p99 "$p99"
        record "$sha" msg_tput "$tput"
        figures="p50 $p50 ms, p99 $p99 ms, $tput msgs/s"
        ;;
    dashboard)
        local rps p50 p99 list
        rps=$(cell "$log" "pages/s")
        p50=$(to_ms "$(cell "$log" "p50 latency")")
        p99=$(to_ms "$(cell "$log" "p99 latency")")
        list=$(cell "$log" "mean \`ListAgents\` round trip" | sed 's/ ms$//')
        [ -n "$rps" ] && [ -n "$p99" ] || { echo "no figures in $log" >&2; exit 1; }
        record "$sha" web_rps "$rps"
        record "$sha" web_p50 "$p50"
        record "$sha" web_p99 "$p99"
        record "$sha" web_list "$list"
        figures="$rps pages/s, p50 $p50 ms, p99 $p99 ms, ListAgents $list ms"
        ;;
    esac
    local row="| $round | $bench | \`$sha\` | $figures | $l0 | $steal ms |"
    echo "$row" >>"$out/runs.md"
    echo "$row"
}

median() {
    sort -g "$1" | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
spread() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
machine="$(nproc) cores, ${cpu:-unknown CPU}"
up_start=$(uptime)

build "$before"
build "$after"
for bin in hive-core hive-web; do
    if cmp -s "$(tree "$before")/target/release/$bin" "$(tree "$after")/target/release/$bin"; then
        echo "warning: $bin is the same binary in both trees" >&2
    fi
done

echo "| round | bench | tree | figures | load (1 min) at start | CPU stolen |" >"$out/runs.md"
echo "| --- | --- | --- | --- | --- | --- |" >>"$out/runs.md"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="$before $after"; else order="$after $before"; fi
    for b in $benches; do
        for sha in $order; do
            run_one "$sha" "$b" "$r"
        done
    done
done
up_end=$(uptime)

{
    echo "| figure | \`$before\` (before) | \`$after\` (after) | after / before |"
    echo "| --- | --- | --- | --- |"
    for m in msg_p50:"messaging: send→push p50 (ms)" msg_p99:"messaging: send→push p99 (ms)" \
        msg_tput:"messaging: durable msgs/s" web_rps:"dashboard: pages/s" \
        web_p50:"dashboard: p50 (ms)" web_p99:"dashboard: p99 (ms)" \
        web_list:"dashboard: mean ListAgents round trip (ms)"; do
        key=${m%%:*}
        label=${m#*:}
        fa=$out/values/$before/$key
        fb=$out/values/$after/$key
        [ -f "$fa" ] && [ -f "$fb" ] || continue
        ma=$(median "$fa")
        mb=$(median "$fb")
        ratio=$(awk -v a="$ma" -v b="$mb" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "n/a" }')
        echo "| $label | $ma ($(spread "$fa")) | $mb ($(spread "$fb")) | $ratio |"
    done
} >"$out/medians.md"

block=$(
    cat <<EOF
<!-- bench-compare: begin (scripts/bench-compare.sh rewrites this block) -->
Command: \`BENCH_ROUNDS=$rounds scripts/bench-compare.sh $before $after\`, run
$(date -u +%Y-%m-%d) ($rounds rounds, each bench once per tree per round,
the order flipped every round). Machine: $machine.

- uptime at start: \`$up_start\`
- uptime at end: \`$up_end\`

Medians (min–max over the rounds):

$(cat "$out/medians.md")

Every run:

$(cat "$out/runs.md")
<!-- bench-compare: end -->
EOF
)

echo
echo "$block"
if [ "${BENCH_NO_WRITE:-}" != 1 ]; then
    perf=$root/docs/perf.md
    if grep -q '^<!-- bench-compare: begin' "$perf"; then
        BLOCK=$block awk '
            /^<!-- bench-compare: begin/ { print ENVIRON["BLOCK"]; skip = 1; next }
            /^<!-- bench-compare: end/ { skip = 0; next }
            !skip' "$perf" >"$perf.tmp"
    else
        { cat "$perf"; printf '\n## Before and after: `scripts/bench-compare.sh`\n\n%s\n' "$block"; } >"$perf.tmp"
    fi
    mv "$perf.tmp" "$perf"
    echo "rewrote the bench-compare block of $perf"
fi
echo "logs: $out"
