#!/usr/bin/env bash
# Keel's added latency under load. Starts a scripted upstream with a fixed delay and Keel in
# front of it (default policy pack, SQLite store, logging on), then at each rate runs the
# open-loop load generator straight at the upstream and through Keel, and prints the
# difference. Everything listens on 127.0.0.1 and is stopped on exit. See bench/README.md.
#
# Settings (environment): RATES="1000 2000" DURATION=20 WARMUP=3 DELAY_MS=20 BODY_BYTES=1000
# STREAM=0|1 KEEL_LOG=info (RUST_LOG for Keel) KEEP=0|1 (keep the temporary directory).
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

echo "== Keel load bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "== RATES=\"$RATES\" DURATION=$DURATION WARMUP=$WARMUP DELAY_MS=$DELAY_MS BODY_BYTES=$BODY_BYTES STREAM=${STREAM:-0} KEEL_LOG=$KEEL_LOG"

cargo build --release -q -p keel -p keel-scripted-upstream --bin keel --example loadgen
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
KEEL="$TARGET/release/keel"
LOADGEN="$TARGET/release/examples/loadgen"

TMP=$(mktemp -d -t keel-bench.XXXXXX)
UP_PID=""
KEEL_PID=""
stop() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
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

"$LOADGEN" upstream --listen 127.0.0.1:0 --delay-ms "$DELAY_MS" --exit-after 900 >"$TMP/upstream.out" 2>"$TMP/upstream.err" &
UP_PID=$!
UP_URL=$(wait_line "$TMP/upstream.out" '^http://')

KEEL_HOME="$TMP" RUST_LOG="$KEEL_LOG" "$KEEL" serve --upstream "$UP_URL" --listen 127.0.0.1:0 \
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

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
for rate in $RATES; do
    for target in direct keel; do
        if [ "$target" = direct ]; then base=$UP_URL; else base=$KEEL_URL; fi
        echo
        "$LOADGEN" run --url "$base/chat/completions" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
            --body-bytes "$BODY_BYTES" --label "$target" "${STREAM_FLAG[@]}" | tee "$TMP/$target-$rate.txt"
        tail -n1 "$TMP/$target-$rate.txt" >>"$RESULTS"
        sleep 1
    done
done

# Stop Keel cleanly so the writer stores everything, then read its own overhead measurements.
stop "$KEEL_PID"
KEEL_PID=""
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
    # Nearest-rank percentiles of overhead_us over the interactions of the measured window.
    stats=$(sql "WITH w AS (SELECT overhead_us AS v FROM interactions WHERE created_at BETWEEN $from AND $to),
        n AS (SELECT count(*) AS c FROM w)
        SELECT c,
          (SELECT v FROM w ORDER BY v LIMIT 1 OFFSET max(0, (c * 50 + 99) / 100 - 1)),
          (SELECT v FROM w ORDER BY v LIMIT 1 OFFSET max(0, (c * 99 + 99) / 100 - 1)),
          (SELECT max(v) FROM w)
        FROM n;")
    decisions=$(sql "SELECT decision || '=' || count(*) FROM interactions WHERE created_at BETWEEN $from AND $to GROUP BY decision;" | tr '\n' ' ')
    echo "$rate|$stats|$decisions" >>"$OVERHEAD"
done < <(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["label"] == "keel": print(r["rate"], r["measure_start_unix_ns"], r["measure_end_unix_ns"])' "$RESULTS")

echo
echo "== Keel log: $(grep -c . "$TMP/keel.log" || true) lines, $(grep -cE 'WARN|ERROR' "$TMP/keel.log" || true) at warn or error"
python3 - "$RESULTS" "$OVERHEAD" <<'EOF'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["rate"], r["label"])] = r
overhead = {}
for line in open(sys.argv[2]):
    rate, count, p50, p99, mx, decisions = line.rstrip("\n").split("|")
    overhead[int(rate)] = (int(count or 0), p50, p99, mx, decisions.strip())
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
print("Keel's self-measured overhead (timings.overhead_us = total - upstream, from the store), measured window only")
print(f"{'rate/s':>6} {'stored':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  decisions")
for rate, (count, p50, p99, mx, decisions) in sorted(overhead.items()):
    ms = lambda us: f"{int(us) / 1000:.3f}" if us not in ("", "None") else "-"
    print(f"{rate:>6} {count:>7} {ms(p50):>8} {ms(p99):>8} {ms(mx):>8}  {decisions}")
    for s in summary:
        if s["rate"] == rate and count:
            s["self_overhead_ms"] = {"p50": int(p50) / 1000, "p99": int(p99) / 1000, "max": int(mx) / 1000, "stored": count}
print()
print(json.dumps({"bench": "keel-load", "runs": summary}))
EOF
