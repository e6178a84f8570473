#!/usr/bin/env bash
# Keel's added latency under load. Starts a scripted upstream with a fixed delay and Keel in
# front of it (default policy pack, SQLite store, logging on), then at each rate runs the
# open-loop load generator straight at the upstream and through Keel, and prints the
# difference. Everything listens on 127.0.0.1 and is stopped on exit. See bench/README.md.
#
# Settings (environment): RATES="1000 2000" DURATION=20 WARMUP=3 DELAY_MS=20 BODY_BYTES=1000
# STREAM=0|1 KEEL_LOG=info (RUST_LOG for Keel) KEEP=0|1 (keep the temporary directory)
# NICE=-10 (as root: run the three processes ahead of other work on a shared machine)
# SKIP_BUILD=1 (use the release binaries already in the target directory).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-"1000 2000"}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
DELAY_MS=${DELAY_MS:-20}
BODY_BYTES=${BODY_BYTES:-1000}
KEEL_LOG=${KEEL_LOG:-info}
STREAM_FLAG=()
if [ "${STREAM:-0}" = 1 ]; then STREAM_FLAG=(--stream); fi
RUN=()
if [ -n "${NICE:-}" ]; then RUN=(nice -n "$NICE"); fi

echo "== Keel load bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "== RATES=\"$RATES\" DURATION=$DURATION WARMUP=$WARMUP DELAY_MS=$DELAY_MS BODY_BYTES=$BODY_BYTES STREAM=${STREAM:-0} KEEL_LOG=$KEEL_LOG NICE=${NICE:-}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p keel -p keel-scripted-upstream --bin keel --example loadgen
fi
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
KEEL="$TARGET/release/keel"
LOADGEN="$TARGET/release/examples/loadgen"

TMP=$(mktemp -d -t keel-bench.XXXXXX)
UP_PID=""
KEEL_PID=""
stop() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    # Keel writes everything it accepted before exiting: give it 30 s.
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$KEEL_PID"
    stop "$UP_PID"
    if [ "${KEEP:-0}" = 1 ]; then echo "== kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (at most 10 s) until file $1 has a line matching $2 and prints that line.
wait_line() {
    for _ in $(seq 1 100); do
        if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}

"${RUN[@]}" "$LOADGEN" upstream --listen 127.0.0.1:0 --delay-ms "$DELAY_MS" --exit-after 900 >"$TMP/upstream.out" 2>"$TMP/upstream.err" &
UP_PID=$!
UP_URL=$(wait_line "$TMP/upstream.out" '^http://')

KEEL_HOME="$TMP" RUST_LOG="$KEEL_LOG" "${RUN[@]}" "$KEEL" serve --upstream "$UP_URL" --listen 127.0.0.1:0 \
    --store "sqlite://$TMP/bench.db" >"$TMP/keel.out" 2>"$TMP/keel.log" &
KEEL_PID=$!
KEEL_URL=$(wait_line "$TMP/keel.out" 'listening on http://' | grep -oE 'http://[^ ]+')
for url in "$UP_URL/models" "$KEEL_URL/models"; do
    for i in $(seq 1 100); do
        if curl -sf -o /dev/null "$url"; then break; fi
        if [ "$i" = 100 ]; then echo "$url does not answer" >&2; exit 1; fi
        sleep 0.1
    done
done
echo "== upstream $UP_URL (delay ${DELAY_MS} ms), Keel $KEEL_URL"

# CPU time (user + system, in ms) a process has used so far: what serving cost, whatever else
# runs on the machine at the same time.
cpu_ms() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%d\n", ($14 + $15) * 1000 / tck }' "/proc/$1/stat"; }

RESULTS="$TMP/results.jsonl"
CPU="$TMP/cpu.txt"
: >"$RESULTS"
: >"$CPU"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for rate in $RATES; do
    for target in direct keel; do
        if [ "$target" = direct ]; then base=$UP_URL; else base=$KEEL_URL; fi
        echo
        up_before=$(cpu_ms "$UP_PID")
        keel_before=$(cpu_ms "$KEEL_PID")
        "${RUN[@]}" "$LOADGEN" run --url "$base/chat/completions" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
            --body-bytes "$BODY_BYTES" --label "$target" "${STREAM_FLAG[@]}" | tee "$TMP/$target-$rate.txt"
        tail -n1 "$TMP/$target-$rate.txt" >>"$RESULTS"
        echo "$rate $target $(($(cpu_ms "$UP_PID") - up_before)) $(($(cpu_ms "$KEEL_PID") - keel_before)) $((rate * (WARMUP + DURATION)))" >>"$CPU"
        echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
        sleep 1
    done
done

# Stop Keel cleanly so the writer stores everything, then read its own overhead measurements.
stop "$KEEL_PID"
KEEL_PID=""
stop "$UP_PID"
UP_PID=""
DB="$TMP/bench.db"
sql() {
    if command -v sqlite3 >/dev/null; then
        sqlite3 -readonly "$DB" "$1"
    else
        python3 -c 'import sqlite3,sys
for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print("|".join(map(str, row)))' "$DB" "$1"
    fi
}
OVERHEAD="$TMP/overhead.txt"
: >"$OVERHEAD"
while read -r rate from to; do
    # Nearest-rank percentiles over the interactions of the measured window: Keel's own
    # overhead_us, and the writer lag (from the moment the interaction was queued, created_at +
    # total_ms, to the start of the batch that stored it, the `at` of its audit record).
    stats=$(sql "WITH w AS (
            SELECT i.overhead_us AS v,
              (CAST(strftime('%s', substr(a.at, 1, 19)) AS INTEGER) * 1000000000 + CAST(substr(a.at, 21, 9) AS INTEGER)
                - i.created_at - CAST(i.total_ms * 1000000 AS INTEGER)) / 1000 AS lag
            FROM interactions i JOIN audit_log a
              ON a.action = 'decision' AND json_extract(a.payload, '\$.interaction_id') = i.id
            WHERE i.created_at BETWEEN $from AND $to),
        n AS (SELECT count(*) AS c FROM w)
        SELECT c,
          (SELECT v FROM w ORDER BY v LIMIT 1 OFFSET max(0, ((SELECT c FROM n) * 50 + 99) / 100 - 1)),
          (SELECT v FROM w ORDER BY v LIMIT 1 OFFSET max(0, ((SELECT c FROM n) * 99 + 99) / 100 - 1)),
          (SELECT max(v) FROM w),
          (SELECT lag FROM w ORDER BY lag LIMIT 1 OFFSET max(0, ((SELECT c FROM n) * 50 + 99) / 100 - 1)),
          (SELECT lag FROM w ORDER BY lag LIMIT 1 OFFSET max(0, ((SELECT c FROM n) * 99 + 99) / 100 - 1)),
          (SELECT max(lag) FROM w)
        FROM n;")
    decisions=$(sql "SELECT decision || '=' || count(*) FROM interactions WHERE created_at BETWEEN $from AND $to GROUP BY decision;" | tr '\n' ' ')
    echo "$rate|$stats|$decisions" >>"$OVERHEAD"
done < <(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["label"] == "keel": print(r["rate"], r["measure_start_unix_ns"], r["measure_end_unix_ns"])' "$RESULTS")

# Every request Keel forwarded should be stored (and in the audit chain), even if its client gave up.
sent=0
for rate in $RATES; do sent=$((sent + rate * (WARMUP + DURATION))); done
served=$(grep -oE 'served [0-9]+' "$TMP/upstream.err" | grep -oE '[0-9]+' || echo 0)
echo
echo "== requests: $sent sent to Keel and $sent directly; the upstream answered $served in all," \
    "so $((served - sent)) from Keel; Keel stored $(sql 'SELECT count(*) FROM interactions') interactions"
echo "== Keel log: $(grep -c . "$TMP/keel.log" || true) lines, $(grep -cE 'WARN|ERROR' "$TMP/keel.log" || true) at warn or error"
python3 - "$RESULTS" "$OVERHEAD" "$CPU" <<'EOF'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["rate"], r["label"])] = r
overhead = {}
for line in open(sys.argv[2]):
    rate, count, p50, p99, mx, lag50, lag99, lagmx, decisions = line.rstrip("\n").split("|")
    overhead[int(rate)] = (int(count or 0), p50, p99, mx, lag50, lag99, lagmx, decisions.strip())
print()
print("latency in ms, open loop, from each request's due time; added = via Keel - direct (per percentile)")
head = f"{'rate/s':>6} {'direct p50':>10} {'direct p99':>10} {'Keel p50':>9} {'Keel p99':>9} {'added p50':>9} {'added p99':>9} {'errors d/k':>10} {'achieved d/k':>13}"
print(head)
print("-" * len(head))
summary = []
for rate in sorted({k[0] for k in runs}):
    d, k = runs.get((rate, "direct")), runs.get((rate, "keel"))
    if not d or not k:
        continue
    dl, kl = d["latency_ms"], k["latency_ms"]
    added50, added99 = kl["p50"] - dl["p50"], kl["p99"] - dl["p99"]
    print(f"{rate:>6} {dl['p50']:>10.3f} {dl['p99']:>10.3f} {kl['p50']:>9.3f} {kl['p99']:>9.3f} {added50:>9.3f} {added99:>9.3f} "
          f"{str(d['errors']) + '/' + str(k['errors']):>10} {str(round(d['achieved_rps'])) + '/' + str(round(k['achieved_rps'])):>13}")
    summary.append({"rate": rate, "direct": dl, "keel": kl, "added_p50_ms": round(added50, 3), "added_p99_ms": round(added99, 3),
                    "errors_direct": d["errors"], "errors_keel": k["errors"]})
print()
print("From Keel's store, measured window only: its self-measured overhead (timings.overhead_us = total - upstream,")
print("from the handler's start to the answer being ready) and the writer lag (answer ready -> its batch being written)")
print(f"{'rate/s':>6} {'stored':>7} {'overhead p50':>12} {'p99':>7} {'max':>7} {'writer lag p50':>14} {'p99':>8} {'max':>8}  decisions")
for rate, (count, p50, p99, mx, lag50, lag99, lagmx, decisions) in sorted(overhead.items()):
    ms = lambda us: int(us) / 1000 if us not in ("", "None") else float("nan")
    print(f"{rate:>6} {count:>7} {ms(p50):>12.3f} {ms(p99):>7.3f} {ms(mx):>7.3f} {ms(lag50):>14.1f} {ms(lag99):>8.1f} {ms(lagmx):>8.1f}  {decisions}")
    for s in summary:
        if s["rate"] == rate and count:
            s["self_overhead_ms"] = {"p50": ms(p50), "p99": ms(p99), "max": ms(mx), "stored": count}
            s["writer_lag_ms"] = {"p50": ms(lag50), "p99": ms(lag99), "max": ms(lagmx)}
print()
print("CPU time per request (user + system, all warm-up and measured requests of the run)")
print(f"{'rate/s':>6} {'upstream direct':>15} {'upstream via Keel':>17} {'Keel':>8}   Keel busy")
cpu = {}
for line in open(sys.argv[3]):
    rate, target, up_ms, keel_ms, requests = line.split()
    cpu[(int(rate), target)] = (float(up_ms) * 1000 / int(requests), float(keel_ms) * 1000 / int(requests))
for rate in sorted({k[0] for k in cpu}):
    (ud, _), (uk, kk) = cpu.get((rate, "direct"), (0, 0)), cpu.get((rate, "keel"), (0, 0))
    print(f"{rate:>6} {ud:>12.0f} us {uk:>14.0f} us {kk:>5.0f} us   {kk * rate / 1e6:.0%} of one core")
    for s in summary:
        if s["rate"] == rate:
            s["keel_cpu_us_per_request"] = round(kk)
print()
print(json.dumps({"bench": "keel-load", "runs": summary}))
EOF
