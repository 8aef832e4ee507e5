#!/bin/bash
# Benchmark for issue 3 (mailmap): per-address cost of `exim -bt` (a new Exim process per
# address) with the SMTP-node configuration, side by side in one run:
#   native      Exim's own ${lookup pgsql} with the seed's queries (bench/mailmap-native.conf)
#   run         exim-snippets/smtp-node-run.conf        (one `mailmap rcpt-route` per address)
#   rs-cold     exim-snippets/smtp-node-readsocket.conf, serve's cache flushed (SIGHUP) at the
#               start of the round: the address's first request reaches the database
#   rs-warm     the same address again at once, answered from the cache
#   run-base    optional (4th argument): the ${run} variant with another mailmap binary, e.g.
#               a build of an earlier commit, for a before/after comparison in the same run
# plus `mailmap route` wall time and peak RSS, and `mailmap serve` throughput and RSS with
# 10,000 domains cached. All on one throwaway PostgreSQL 15 (unix socket) with 10,000
# ldomain.mdomain domains, 10,000 mailboxes, 100 co_domains.
#
# Usage (as root, Debian 12 with postgresql-15 and exim4-daemon-heavy):
#   CARGO_TARGET_DIR=... cargo build --release --bin mailmap
#   bench/mailmap-exim.sh [MAILMAP_BINARY] [ROUNDS] [N] [BASELINE_MAILMAP_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
MAILMAP=${1:-${CARGO_TARGET_DIR:-target}/release/mailmap}
ROUNDS=${2:-5}
N=${3:-300}
BASE=${4:-}
MAILMAP=$(readlink -f "$MAILMAP")
[ -x "$MAILMAP" ] || { echo "no mailmap binary at $MAILMAP" >&2; exit 64; }
if [ -n "$BASE" ]; then
    BASE=$(readlink -f "$BASE")
    [ -x "$BASE" ] || { echo "no baseline mailmap binary at $BASE" >&2; exit 64; }
fi
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3

ROOT=$(mktemp -d /tmp/mc-bench-XXXXXX)
chmod 755 "$ROOT"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SOCKDIR=$ROOT/sock
mkdir -p "$ROOT/data" "$SOCKDIR" "$ROOT/spool"
chown postgres "$ROOT/data" "$SOCKDIR"
SERVE_PID=
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
    runuser -u postgres -- $PGBIN/pg_ctl -D "$ROOT/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

runuser -u postgres -- $PGBIN/initdb -D "$ROOT/data" -A trust -U postgres >/dev/null
cat >> "$ROOT/data/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCKDIR'
fsync = off
CONF
runuser -u postgres -- $PGBIN/pg_ctl -D "$ROOT/data" -l "$ROOT/data/pg.log" -w start >/dev/null
PSQL="psql -h $SOCKDIR -p $PORT -X -q -v ON_ERROR_STOP=1"
$PSQL -U postgres -d postgres -c "CREATE ROLE mail LOGIN PASSWORD 'mailpw'"
$PSQL -U postgres -d postgres -c "CREATE DATABASE mail OWNER mail"
$PSQL -U mail -d mail <<'SQL'
CREATE TABLE mail ("id" BIGSERIAL PRIMARY KEY, "mailbox" CHARACTER VARYING(32) not null,
  "ldomain_id" int NOT NULL, "mdomain_id" int NOT NULL, active BOOLEAN DEFAULT TRUE NOT NULL,
  CONSTRAINT "mail_ldomain_id_check" CHECK (("ldomain_id" > 0)));
CREATE TABLE "ldomain" ("id" BIGSERIAL PRIMARY KEY, "domain" CHARACTER VARYING(32) NOT NULL,
  "active" BOOLEAN DEFAULT TRUE NOT NULL, CONSTRAINT ldomain_k UNIQUE (domain));
CREATE TABLE "mdomain" ("id" BIGSERIAL PRIMARY KEY, "domain" CHARACTER VARYING(32) NOT NULL,
  "active" BOOLEAN DEFAULT TRUE NOT NULL, CONSTRAINT mdomain_k UNIQUE (domain));
CREATE TABLE "maps" ("id" SERIAL PRIMARY KEY, "ldomain_id" int NOT NULL, "mdomain_id" int NOT NULL,
  "storage1" CHARACTER VARYING(32) NOT NULL, "storage2" CHARACTER VARYING(32) NOT NULL,
  CONSTRAINT maps_ldomain_k UNIQUE (ldomain_id));
CREATE TABLE "co_domain" ("id" BIGSERIAL PRIMARY KEY, "domain" CHARACTER VARYING(255) NOT NULL,
  "active" BOOLEAN DEFAULT TRUE NOT NULL, CONSTRAINT co_domain_k UNIQUE (domain));
CREATE TABLE "co_maps" ("id" SERIAL PRIMARY KEY, "domain_id" int NOT NULL,
  "storage1" CHARACTER VARYING(32) NOT NULL, "storage2" CHARACTER VARYING(32) NOT NULL,
  CONSTRAINT co_maps_domain_k UNIQUE (domain_id));
-- node names are IP literals so that both Exim variants route without DNS
INSERT INTO mdomain (id, domain) VALUES (1, 'domain.ru');
INSERT INTO ldomain (id, domain) SELECT g, 'd' || g FROM generate_series(1, 10000) g;
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2)
  SELECT g, 1, CASE WHEN g % 2 = 0 THEN '192.0.2.11' ELSE '192.0.2.12' END,
               CASE WHEN g % 2 = 0 THEN '192.0.2.12' ELSE '192.0.2.11' END
  FROM generate_series(1, 10000) g;
INSERT INTO mail (mailbox, ldomain_id, mdomain_id) SELECT 'user' || g, g, 1 FROM generate_series(1, 10000) g;
INSERT INTO co_domain (id, domain) SELECT g, 'co' || g || '.example.org' FROM generate_series(1, 100) g;
INSERT INTO co_maps (domain_id, storage1, storage2) SELECT g, '192.0.2.12', '192.0.2.11' FROM generate_series(1, 100) g;
ANALYZE mail; ANALYZE ldomain; ANALYZE mdomain; ANALYZE maps; ANALYZE co_domain; ANALYZE co_maps;
SQL

URL="host=$SOCKDIR port=$PORT user=mail dbname=mail"
CONF=$ROOT/mailmap.toml
cat > "$CONF" <<TOML
node = "smtp-01.domain.ru"
[[directory]]
name = "bench"
url = "$URL"
[map]
socket_group = "Debian-exim"
positive_ttl = 3600
TOML
chmod 644 "$CONF"
SOCK=$ROOT/mailmap.sock
"$MAILMAP" --config "$CONF" serve --socket "$SOCK" 2>/dev/null &
SERVE_PID=$!
for _ in $(seq 100); do "$MAILMAP" --config "$CONF" ask --socket "$SOCK" ping >/dev/null 2>&1 && break; sleep 0.05; done

cp exim-snippets/smtp-node-run.conf exim-snippets/smtp-node-readsocket.conf bench/mailmap-native.conf "$ROOT/"
chmod 644 "$ROOT"/*.conf
EXIM=/usr/sbin/exim4
X_NATIVE=("$EXIM" -C "$ROOT/mailmap-native.conf" "-DMC_SPOOL=$ROOT/spool" "-DPG_SOCKET=$SOCKDIR/.s.PGSQL.$PORT")
X_RUN=("$EXIM" -C "$ROOT/smtp-node-run.conf" "-DMC_SPOOL=$ROOT/spool" "-DMC_MAILMAP=$MAILMAP" "-DMC_CONFIG=$CONF")
X_RS=("$EXIM" -C "$ROOT/smtp-node-readsocket.conf" "-DMC_SPOOL=$ROOT/spool" "-DMC_SOCKET=$SOCK")
X_BASE=("$EXIM" -C "$ROOT/smtp-node-run.conf" "-DMC_SPOOL=$ROOT/spool" "-DMC_MAILMAP=$BASE" "-DMC_CONFIG=$CONF")
VARIANTS="NATIVE RUN RS"
[ -n "$BASE" ] && VARIANTS="$VARIANTS BASE"

# N distinct existing recipients spread over the domains (fixed seed), 1 in 10 a co_domain.
$PY - "$N" > "$ROOT/addrs" <<'PYEOF'
import random, sys
random.seed(3)
n = int(sys.argv[1])
for i, k in enumerate(random.sample(range(1, 10001), n)):
    print(f"anyone@co{k % 100 + 1}.example.org" if i % 10 == 9 else f"user{k}@d{k}.domain.ru")
PYEOF

# Sanity: every variant routes the first address to the same hosts.
A1=$(head -1 "$ROOT/addrs")
for v in $VARIANTS; do
    declare -n X="X_$v"
    out=$("${X[@]}" -bt "$A1" 2>&1) || { echo "$v: -bt $A1 failed: $out" >&2; exit 1; }
    echo "$out" | grep -q 'host 192.0.2.1' || { echo "$v: unexpected: $out" >&2; exit 1; }
done

# One round: every address through every variant in turn (native, run, rs-cold, rs-warm
# [, run-base]), so that a burst of load from other processes on the shared machine hits all
# variants alike; each call is timed alone with $EPOCHREALTIME (no process for the clock).
# rs-cold is the first request for the address since the SIGHUP that starts the round (its
# answer comes from the database), rs-warm the second (from the cache).
bt_us() { # variant-array-name address -> microseconds of one `exim -bt`
    declare -n X="$1"
    local t0=$EPOCHREALTIME
    "${X[@]}" -bt "$2" >/dev/null 2>&1 || true
    local t1=$EPOCHREALTIME
    echo $(( ${t1/./} - ${t0/./} ))
}
round() { # -> "native run rscold rswarm base" ms per address
    local n=0 nat=0 run=0 rsc=0 rsw=0 base=0 a
    kill -HUP "$SERVE_PID"; sleep 0.2
    while read -r a; do
        nat=$(( nat + $(bt_us X_NATIVE "$a") ))
        run=$(( run + $(bt_us X_RUN "$a") ))
        rsc=$(( rsc + $(bt_us X_RS "$a") ))
        rsw=$(( rsw + $(bt_us X_RS "$a") ))
        [ -n "$BASE" ] && base=$(( base + $(bt_us X_BASE "$a") ))
        n=$(( n + 1 ))
    done < "$ROOT/addrs"
    for t in $nat $run $rsc $rsw $base; do echo "scale=3; $t / 1000 / $n" | bc; done | tr '\n' ' '
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# warm-up round (PostgreSQL buffers, page cache), not measured
round >/dev/null
: > "$ROOT/native"; : > "$ROOT/run"; : > "$ROOT/rscold"; : > "$ROOT/rswarm"; : > "$ROOT/base"
for r in $(seq "$ROUNDS"); do
    read -r t_nat t_run t_rsc t_rsw t_base <<< "$(round)"
    echo "$t_nat" >> "$ROOT/native"; echo "$t_run" >> "$ROOT/run"
    echo "$t_rsc" >> "$ROOT/rscold"; echo "$t_rsw" >> "$ROOT/rswarm"
    extra=
    if [ -n "$BASE" ]; then
        echo "$t_base" >> "$ROOT/base"
        extra=" run-base $t_base"
    fi
    echo "round $r: native $t_nat run $t_run rs-cold $t_rsc rs-warm $t_rsw$extra ms/address ($(uptime | sed 's/.*load/load/'))" >&2
done
NATIVE=$(median < "$ROOT/native"); RUN=$(median < "$ROOT/run")
RSC=$(median < "$ROOT/rscold"); RSW=$(median < "$ROOT/rswarm")
ratio() { echo "scale=2; $1 / $NATIVE" | bc; }

echo "## exim -bt per address (N=$N, $ROUNDS rounds, each address through every variant in turn; median of the rounds' means, ms)"
echo "| variant | ms/address | vs native |"
echo "| --- | --- | --- |"
echo "| native \${lookup pgsql} (seed queries) | $NATIVE | 1.00 |"
echo "| \${run} mailmap rcpt-route | $RUN | $(ratio "$RUN") |"
echo "| \${readsocket} serve, cache flushed | $RSC | $(ratio "$RSC") |"
echo "| \${readsocket} serve, cache warm | $RSW | $(ratio "$RSW") |"
if [ -n "$BASE" ]; then
    RB=$(median < "$ROOT/base")
    echo "| \${run} mailmap rcpt-route, baseline binary | $RB | $(ratio "$RB") |"
fi
echo "(all rounds: native $(tr '\n' ' ' < "$ROOT/native")| run $(tr '\n' ' ' < "$ROOT/run")| rs-cold $(tr '\n' ' ' < "$ROOT/rscold")| rs-warm $(tr '\n' ' ' < "$ROOT/rswarm")$([ -n "$BASE" ] && echo "| run-base $(tr '\n' ' ' < "$ROOT/base")"))"

# mailmap route: wall time per call and peak RSS
echo
echo "## mailmap route (one process, one query)"
hyperfine -N --warmup 20 --runs 300 --export-json "$ROOT/route.json" \
    "$MAILMAP --config $CONF route d4242.domain.ru" >/dev/null 2>&1
$PY - "$ROOT/route.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f"wall time: median {r['median']*1000:.2f} ms, mean {r['mean']*1000:.2f} ms (hyperfine, 300 runs)")
PYEOF
RSS=$(for _ in $(seq 20); do /usr/bin/time -f %M "$MAILMAP" --config "$CONF" route d4242.domain.ru 2>&1 >/dev/null; done | sort -n | tail -1)
echo "peak RSS: ${RSS} KiB (max of 20 runs, GNU time %M)"

# serve: 10,000 domains cached, throughput with 4 client processes, RSS
echo
echo "## mailmap serve (10,000 domains cached)"
kill -HUP "$SERVE_PID"; sleep 0.2
$PY - "$SOCK" <<'PYEOF'
import socket, sys, time
from multiprocessing import Pool
sock = sys.argv[1]
def ask(req):
    s = socket.socket(socket.AF_UNIX); s.connect(sock); s.sendall(req); s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        b = s.recv(256)
        if not b: break
        out += b
    s.close(); return out
def work(seed):
    n = 0
    for k in range(seed, 10001, 4):
        r = ask(b"route d%d.domain.ru" % k); assert r.startswith(b"OK "), r; n += 1
    for k in range(seed, 10001, 4):
        r = ask(b"route d%d.domain.ru" % k); assert r.startswith(b"OK "), r; n += 1
    return n
for k in range(1, 10001):  # fill the cache
    ask(b"route d%d.domain.ru" % k)
t0 = time.time()
with Pool(4) as p:
    n = sum(p.map(work, [1, 2, 3, 4]))
dt = time.time() - t0
print(f"throughput: {n/dt:.0f} lookups/s ({n} cached lookups, 4 Python client processes, one connection per lookup)")
print(ask(b"stats").decode().strip())
PYEOF
grep -E 'VmRSS|VmHWM' /proc/$SERVE_PID/status | tr -s ' \t' ' '
