#!/bin/bash
# Benchmark of `mailauth serve` (nginx auth_http) against the ceiling (a static nginx reply
# of the same headers) and the seed's handler (nginx perl, two new PostgreSQL connections
# per request), all side by side in one run on loopback, PostgreSQL behind the services.
#
#   bench/http/run.sh            (as root on Debian 12: postgresql 15, nginx + perl module,
#                                 libdbd-pg-perl, wrk, rustc; CARGO_TARGET_DIR honoured)
# mailauth runs three times: as configured by default (login cache on, `user_ttl` 5 s, a
# cached login trusted while the directory answered a ping sent at most `db_lease` 0.1 s
# ago), strict (`db_lease = 0`: a ping sent after each request arrived) and with
# `user_ttl = 0` (one lookup query per request, as before the cache).
# Knobs: KEEP=1 (keep the temp dir: logs) PGSLOW=MS (log slower statements) QUICK=1 (only the MD5 latency runs: static ceiling, mailauth by default, strict and without cache, the PostgreSQL floor; ONLY="static default strict nocache floor b" picks some) MAILAUTH_B=PATH (another build on the default configuration, run "b" in QUICK mode, right after the default one; B_WORKERS=N gives it another thread count) PERF=1 (perf record of the service in each latency run; with KEEP=1) WORKERS=32 HTTP_EXTRA="key = value" (more [auth.http] settings, default instance only) PIN=1 (PostgreSQL on a CPU of its own) RUNS=3 DURATION=10 WARMUP=2 CONC=32 RATE=2000 SHA_RATE=100 SEED_RATE=20 NUSERS=1000 SETTLE=3
# (the fixed rates must stay below each handler's capacity, or the latency is queueing)
#
# Throughput: wrk at fixed concurrency, one connection per request (Connection: close, as
# nginx does), random users and client IPs. Latency: bench/http/ratebench.rs, open loop
# at a fixed rate, latency from each request's scheduled time. Medians of RUNS runs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RUNS=${RUNS:-3} DURATION=${DURATION:-10} CONC=${CONC:-32} RATE=${RATE:-2000}
SHA_RATE=${SHA_RATE:-100} SEED_RATE=${SEED_RATE:-20} NUSERS=${NUSERS:-1000} WARMUP=${WARMUP:-2}
PGBIN=/usr/lib/postgresql/15/bin

ROOT=$(mktemp -d /tmp/mailauth-bench.XXXXXX)
chmod 755 "$ROOT"
[ -z "${KEEP:-}" ] || echo "== keeping $ROOT (logs, results)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -d "$ROOT/pg/data" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$ROOT/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$ROOT"
}
trap cleanup EXIT

# The benchmark's own packages (not needed by the tests, so not in .ci/run).
NEED=(wrk nginx libnginx-mod-http-perl libdbd-pg-perl postgresql dovecot-core)
MISSING=()
for p in "${NEED[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${MISSING[@]}"
fi

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== build"
(cd "$REPO" && cargo build --release --quiet --bin mailauth)
rustc -O "$HERE/ratebench.rs" -o "$ROOT/ratebench"
MAILAUTH="$TARGET/release/mailauth"

echo "== PostgreSQL"
PGPORT=$(free_port)
mkdir -p "$ROOT/pg/data" "$ROOT/pg/sock"
chown -R postgres:postgres "$ROOT/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$ROOT/pg/data" -U postgres --auth-local=trust \
    --auth-host=md5 -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat >>"$ROOT/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$ROOT/pg/sock'
max_connections = 200
fsync = off
synchronous_commit = off
log_min_duration_statement = ${PGSLOW:--1}
log_connections = $([ -n "${PGSLOW:-}" ] && echo on || echo off)
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$ROOT/pg/data" -l "$ROOT/pg/log" -w -t 30 start >/dev/null
# PIN=1: PostgreSQL on the last CPU alone, everything else (services, load generators,
# pgbench's client) on the others: the cluster's real layout, where mailauth runs on the
# proxy host and PostgreSQL on the storages, approximated on one machine.
if [ -n "${PIN:-}" ]; then
    PGCPU=$(($(nproc) - 1))
    PM=$(head -1 "$ROOT/pg/data/postmaster.pid")
    for p in "$PM" $(pgrep -P "$PM"); do taskset -a -p -c "$PGCPU" "$p" >/dev/null; done
    taskset -p -c "0-$((PGCPU - 1))" $$ >/dev/null
    echo "== PostgreSQL pinned to CPU $PGCPU, the rest to CPUs 0-$((PGCPU - 1))"
fi
PSQL=(psql -h "$ROOT/pg/sock" -p "$PGPORT" -X -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" -U postgres -c "CREATE ROLE mail LOGIN PASSWORD 'mailpw'" -c "CREATE DATABASE mail OWNER mail"
SHA_HASH=$(doveadm pw -s SHA512-CRYPT -p pwsha)
"${PSQL[@]}" -U mail -d mail <<SQL
CREATE TABLE mail (id BIGSERIAL PRIMARY KEY, mailbox VARCHAR(32) NOT NULL, password VARCHAR(128),
  ldomain_id int NOT NULL, mdomain_id int NOT NULL, active BOOLEAN DEFAULT TRUE NOT NULL);
CREATE TABLE ldomain (id BIGSERIAL PRIMARY KEY, domain VARCHAR(32) NOT NULL UNIQUE, active BOOLEAN DEFAULT TRUE NOT NULL);
CREATE TABLE mdomain (id BIGSERIAL PRIMARY KEY, domain VARCHAR(32) NOT NULL UNIQUE, active BOOLEAN DEFAULT TRUE NOT NULL);
CREATE TABLE maps (id SERIAL PRIMARY KEY, ldomain_id int NOT NULL UNIQUE, mdomain_id int NOT NULL,
  storage1 VARCHAR(32) NOT NULL, storage2 VARCHAR(32) NOT NULL);
CREATE TABLE co_domain (id BIGSERIAL PRIMARY KEY, domain VARCHAR(255) NOT NULL UNIQUE, active BOOLEAN DEFAULT TRUE NOT NULL);
CREATE TABLE co_maps (id SERIAL PRIMARY KEY, domain_id int NOT NULL UNIQUE, storage1 VARCHAR(32) NOT NULL, storage2 VARCHAR(32) NOT NULL);
INSERT INTO mdomain (id, domain) VALUES (1, 'example.test');
INSERT INTO ldomain (id, domain) SELECT i, 'd' || i FROM generate_series(1, 50) i;
INSERT INTO maps (ldomain_id, mdomain_id, storage1, storage2)
  SELECT i, 1, CASE WHEN i % 2 = 0 THEN 'storage-01' ELSE 'storage-02' END,
               CASE WHEN i % 2 = 0 THEN 'storage-02' ELSE 'storage-01' END FROM generate_series(1, 50) i;
-- the seed's bare MD5 hex
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id)
  SELECT 'u' || i, md5('pw' || i), 1 + i % 50, 1 FROM generate_series(1, $NUSERS) i;
INSERT INTO mail (mailbox, password, ldomain_id, mdomain_id)
  SELECT 'sha' || i, '$SHA_HASH', 1 + i % 50, 1 FROM generate_series(1, $NUSERS) i;
-- what any schema init adds: an index for the lookups by (domain, mailbox)
CREATE INDEX mail_ldomain_mailbox_i ON mail (ldomain_id, lower(mailbox));
ANALYZE mail; ANALYZE ldomain; ANALYZE mdomain; ANALYZE maps;
SQL
for i in $(seq 1 "$NUSERS"); do printf 'u%d@d%d.example.test\tpw%d\n' "$i" $((1 + i % 50)) "$i"; done >"$ROOT/md5.tsv"
for i in $(seq 1 "$NUSERS"); do printf 'sha%d@d%d.example.test\tpwsha\n' "$i" $((1 + i % 50)); done >"$ROOT/sha.tsv"

echo "== services"
MA_PORT=$(free_port)
cat >"$ROOT/mailcluster.toml" <<TOML
db_timeout = 5
[[directory]]
name = "bench"
url = "host=$ROOT/pg/sock port=$PGPORT user=mail dbname=mail"
[auth.http]
workers = ${WORKERS:-32}
[auth.health]
# no storages run in this benchmark; the check is a cached lookup per request anyway
enabled = false
[auth.throttle]
hash_concurrency = 2
[auth.nodes]
storage-01 = "127.0.0.2"
storage-02 = "127.0.0.3"
TOML
# HTTP_EXTRA: more [auth.http] settings for the default instance only (the others are derived
# from the base file above).
cp "$ROOT/mailcluster.toml" "$ROOT/mailcluster-base.toml"
if [ -n "${HTTP_EXTRA:-}" ]; then
    /usr/bin/python3 -c 'import sys; p=sys.argv[1]; s=open(p).read(); open(p,"w").write(s.replace("[auth.http]\n", "[auth.http]\n" + sys.argv[2] + "\n", 1))' "$ROOT/mailcluster.toml" "$HTTP_EXTRA"
fi
"$MAILAUTH" --config "$ROOT/mailcluster.toml" serve --log stderr --listen "127.0.0.1:$MA_PORT" \
    >/dev/null 2>"$ROOT/mailauth.log" &
PIDS+=($!)
# The same service without the login cache (`user_ttl = 0`): one lookup query per request.
MA_NC_PORT=$(free_port)
sed 's/^\[auth.http\]$/[auth.http]\nuser_ttl = 0/' "$ROOT/mailcluster-base.toml" >"$ROOT/mailcluster-nocache.toml"
"$MAILAUTH" --config "$ROOT/mailcluster-nocache.toml" serve --log stderr --listen "127.0.0.1:$MA_NC_PORT" \
    >/dev/null 2>"$ROOT/mailauth-nocache.log" &
PIDS+=($!)
# The cached service with a ping per login (`db_lease = 0`).
MA_ST_PORT=$(free_port)
sed 's/^\[auth.http\]$/[auth.http]\ndb_lease = 0/' "$ROOT/mailcluster-base.toml" >"$ROOT/mailcluster-strict.toml"
"$MAILAUTH" --config "$ROOT/mailcluster-strict.toml" serve --log stderr --listen "127.0.0.1:$MA_ST_PORT" \
    >/dev/null 2>"$ROOT/mailauth-strict.log" &
PIDS+=($!)

# MAILAUTH_B=PATH: another mailauth binary on the default configuration (QUICK runs "b",
# between the others: a side-by-side comparison of two builds in one run).
MA_B_PORT=
if [ -n "${MAILAUTH_B:-}" ]; then
    MA_B_PORT=$(free_port)
    sed "s/^workers = .*/workers = ${B_WORKERS:-${WORKERS:-32}}/" "$ROOT/mailcluster-base.toml" >"$ROOT/mailcluster-b.toml"
    "$MAILAUTH_B" --config "$ROOT/mailcluster-b.toml" serve --log stderr --listen "127.0.0.1:$MA_B_PORT" \
        >/dev/null 2>"$ROOT/mailauth-b.log" &
    PIDS+=($!)
fi

NG_STATIC=$(free_port) NG_SEED=$(free_port)
# Two nginx instances: the ceiling must not share worker processes with the perl handler,
# which blocks its worker for the length of each request (two connects and two queries).
nginx_conf() { # dir port extra-main extra-http location-body
    mkdir -p "$1/logs" "$1/tmp"
    cat >"$1/nginx.conf" <<NGX
$3
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
lock_file $1/nginx.lock;
worker_processes 2;
user www-data www-data;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    $4
    server {
        listen 127.0.0.1:$2;
        location /auth { $5 }
    }
}
NGX
    nginx -p "$1/" -c "$1/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}
nginx_conf "$ROOT/nginx-static" "$NG_STATIC" "" "" \
    'add_header Auth-Status OK; add_header Auth-Server 127.0.0.2; add_header Auth-Port 143; return 200 "";'
nginx_conf "$ROOT/nginx-seed" "$NG_SEED" \
    "load_module /usr/lib/nginx/modules/ngx_http_perl_module.so;
env BENCH_PGHOST=$ROOT/pg/sock;
env BENCH_PGPORT=$PGPORT;
env BENCH_PGDB=mail;" \
    "perl_modules $HERE;
    perl_require seed_mailauth.pm;" \
    'perl seed_mailauth::handler;'
for i in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$MA_PORT) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$NG_SEED) 2>/dev/null \
        && (exec 3<>/dev/tcp/127.0.0.1/$MA_NC_PORT) 2>/dev/null \
        && (exec 3<>/dev/tcp/127.0.0.1/$MA_ST_PORT) 2>/dev/null \
        && { [ -z "$MA_B_PORT" ] || (exec 3<>/dev/tcp/127.0.0.1/$MA_B_PORT) 2>/dev/null; } \
        && (exec 3<>/dev/tcp/127.0.0.1/$NG_STATIC) 2>/dev/null && break
    sleep 0.05
done
check() { # one request, must be OK
    local port=$1 user=$2 pass=$3
    curl -s -o /dev/null -D - "http://127.0.0.1:$port/auth" -H "Auth-Method: plain" -H "Auth-User: $user" \
        -H "Auth-Pass: $pass" -H "Auth-Protocol: imap" -H "Auth-Login-Attempt: 1" -H "Client-IP: 10.0.0.1" \
        | grep -q '^Auth-Status: OK' || { echo "sanity check failed on port $port" >&2; exit 1; }
}
check "$MA_PORT" u1@d2.example.test pw1
check "$MA_PORT" sha1@d2.example.test pwsha
check "$MA_NC_PORT" u1@d2.example.test pw1
check "$MA_ST_PORT" u1@d2.example.test pw1
check "$NG_SEED" u1@d2.example.test pw1
check "$NG_STATIC" x y
[ -z "$MA_B_PORT" ] || check "$MA_B_PORT" u1@d2.example.test pw1

RES="$ROOT/results.txt"
: >"$RES"
# Each measurement starts on a settled machine: the previous one's backlog (queued perl
# requests, hashing, PostgreSQL backends exiting) must not land in the next one's tail.
settle() { sleep "${SETTLE:-3}"; }
wrk_run() { # name port users-file
    local out
    settle
    out=$(USERS=$3 wrk -t2 -c"$CONC" -d"${DURATION}s" -s "$HERE/wrk_auth.lua" "http://127.0.0.1:$2/auth" | grep '^RESULT')
    echo "wrk $1 $out" | tee -a "$RES"
}
# CPU time (user + system, all threads, in USER_HZ ticks) of the processes listening on a
# port (nginx: its workers) and of PostgreSQL's processes.
port_pids() { ss -Htlnp "sport = :$1" | grep -o "pid=[0-9]*" | cut -d= -f2 | sort -u || true; }
cpu_ticks() { # pid...
    local t=0 p f
    for p in "$@"; do
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}
# transactions of database mail so far (each query of the services is one)
pg_xacts() { "${PSQL[@]}" -U postgres -d postgres -At -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'mail'"; }
pg_pids() { local pm; pm=$(head -1 "$ROOT/pg/data/postmaster.pid"); echo "$pm" $(pgrep -P "$pm"); }
rate_run() { # name port users-file rate
    local out svc s0 p0 x0
    settle
    [ -z "${KEEP:-}" ] || echo "start $1 $(date -u +%T.%N)" >>"$ROOT/times.txt"
    svc=$(port_pids "$2")
    s0=$(cpu_ticks $svc) p0=$(cpu_ticks $(pg_pids)) x0=$(pg_xacts)
    local perf=
    if [ -n "${PERF:-}" ]; then # PERF=1: a CPU profile of the service during the run (KEEP=1 keeps it)
        perf record -q -F 1999 -g -o "$ROOT/perf-$1.data" -p "$(echo $svc | tr ' ' ',')" 2>/dev/null &
        perf=$!
    fi
    out=$(RATEBENCH_WARMUP=$WARMUP RATEBENCH_DUMP=${KEEP:+$ROOT/lat-$1.txt} "$ROOT/ratebench" "127.0.0.1:$2" "$4" "$DURATION" "$3" 64)
    [ -z "$perf" ] || { kill -INT "$perf"; wait "$perf" || true; }
    # ms of CPU per 1,000 requests (ticks are 10 ms; requests = rate x (warm-up + duration))
    out="$out $(/usr/bin/python3 -c 'import sys; s,p,n,x,r=map(float,sys.argv[1:]); print("svc_cpu_ms_per_kreq=%.1f pg_cpu_ms_per_kreq=%.1f pg_xacts_per_s=%.1f" % (s*1e4/n, p*1e4/n, x*r/n))' \
        $(($(cpu_ticks $svc) - s0)) $(($(cpu_ticks $(pg_pids)) - p0)) $(($4 * (DURATION + WARMUP))) $(($(pg_xacts) - x0)) "$4")"
    echo "rate $1@$4 $out" | tee -a "$RES"
}
# The floor for any design that asks PostgreSQL once per login, on this machine: pgbench
# sends a bare `SELECT 1` at RATE (4 connections, prepared) over the same unix socket while
# ratebench drives the static nginx reply at RATE, i.e. the same HTTP load and the same
# number of PostgreSQL round trips as the service, with none of our code. Reported as the
# latency of pgbench's round trips (after the warm-up), beside the static reply's; and
# pgbench alone (no HTTP load): the latency of the round trip by itself.
printf 'SELECT 1;\n' >"$ROOT/select1.sql"
chmod 644 "$ROOT/select1.sql"
floor_run() { # beside|alone
    local out
    settle
    rm -f "$ROOT"/pgb.*
    "$PGBIN/pgbench" -h "$ROOT/pg/sock" -p "$PGPORT" -U mail -n -f "$ROOT/select1.sql" -c 4 -j 1 \
        -R "$RATE" -T $((DURATION + WARMUP + 2)) -M prepared -l --log-prefix="$ROOT/pgb" mail >/dev/null 2>&1 &
    local pgb=$!
    sleep 1
    if [ "$1" = beside ]; then
        out=$(RATEBENCH_WARMUP=$WARMUP "$ROOT/ratebench" "127.0.0.1:$NG_STATIC" "$RATE" "$DURATION" "$ROOT/md5.tsv" 64)
        echo "rate nginx-static-beside-pgbench@$RATE $out" | tee -a "$RES"
    fi
    wait "$pgb" || true
    out=$(/usr/bin/python3 - "$ROOT" "$WARMUP" "$DURATION" <<'PY'
import glob, sys
rows = []
for f in glob.glob(sys.argv[1] + '/pgb.*'):
    for line in open(f):
        p = line.split()  # client tx time_us script epoch epoch_us [lag_us]
        rows.append((int(p[4]) + int(p[5]) / 1e6, (int(p[2]) + (int(p[6]) if len(p) > 6 else 0)) / 1000))
t0 = min(t for t, _ in rows) + 1 + float(sys.argv[2])  # pgbench started 1 s before ratebench
lat = sorted(l for t, l in rows if t0 <= t < t0 + float(sys.argv[3]))
n = len(lat)
q = lambda x: lat[min(n - 1, int(n * x))]
print(f"sent={n} p50={q(.5):.3f}ms p90={q(.9):.3f}ms p99={q(.99):.3f}ms p99.9={q(.999):.3f}ms max={lat[-1]:.3f}ms")
PY
)
    local name=pgbench-select1-alone
    [ "$1" = beside ] && name=pgbench-select1-beside-static
    echo "rate $name@$RATE rate=$RATE $out failed=0" | tee -a "$RES"
}
for run in $(seq 1 "$RUNS"); do
    echo "== run $run/$RUNS ($(uptime | sed 's/.*load/load/'))"
    if [ -n "${QUICK:-}" ]; then # only the MD5 latency goal, against its ceiling
        want() { [[ " ${ONLY:-static default strict nocache floor b} " == *" $1 "* ]]; }
        want static && rate_run nginx-static "$NG_STATIC" "$ROOT/md5.tsv" "$RATE"
        want default && rate_run mailauth-md5 "$MA_PORT" "$ROOT/md5.tsv" "$RATE"
        [ -z "$MA_B_PORT" ] || { want b && rate_run mailauth-md5-b "$MA_B_PORT" "$ROOT/md5.tsv" "$RATE"; }
        want strict && rate_run mailauth-md5-strict "$MA_ST_PORT" "$ROOT/md5.tsv" "$RATE"
        want nocache && rate_run mailauth-md5-nocache "$MA_NC_PORT" "$ROOT/md5.tsv" "$RATE"
        want floor && floor_run beside && floor_run alone
        continue
    fi
    wrk_run nginx-static "$NG_STATIC" "$ROOT/md5.tsv"
    wrk_run mailauth-md5 "$MA_PORT" "$ROOT/md5.tsv"
    wrk_run mailauth-md5-nocache "$MA_NC_PORT" "$ROOT/md5.tsv"
    wrk_run mailauth-sha512 "$MA_PORT" "$ROOT/sha.tsv"
    wrk_run seed-perl-md5 "$NG_SEED" "$ROOT/md5.tsv"
    rate_run nginx-static "$NG_STATIC" "$ROOT/md5.tsv" "$RATE"
    rate_run mailauth-md5 "$MA_PORT" "$ROOT/md5.tsv" "$RATE"
    rate_run mailauth-md5-strict "$MA_ST_PORT" "$ROOT/md5.tsv" "$RATE"
    rate_run mailauth-md5-nocache "$MA_NC_PORT" "$ROOT/md5.tsv" "$RATE"
    floor_run beside
    floor_run alone
    rate_run mailauth-sha512 "$MA_PORT" "$ROOT/sha.tsv" "$SHA_RATE"
    rate_run seed-perl-md5 "$NG_SEED" "$ROOT/md5.tsv" "$SEED_RATE"
done

echo "== mailauth (cached) counters: $(curl -s "http://127.0.0.1:$MA_PORT/metrics" | grep -E '^mailauth_(user_cache_hits_total|cache_refreshes_total|directory_lease_misses_total|auth_total\{result="ok"\}) ' | tr '\n' ' ')"
echo "== medians of $RUNS runs (CONC=$CONC, DURATION=${DURATION}s, $(nproc) CPUs, $(uptime | sed 's/.*load/load/'))"
/usr/bin/python3 - "$RES" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kind, name, rest = line.split(' ', 2)
    kv = dict(re.findall(r'(\S+?)=([0-9.]+)', rest))
    rows.setdefault((kind, name), []).append(kv)
med = lambda k, key: statistics.median(float(r[key]) for r in rows[k])
cpu = lambda k, key: f"{med(k, key):.0f}" if all(key in r for r in rows[k]) else ""
seed = med(('wrk', 'seed-perl-md5'), 'rps') if ('wrk', 'seed-perl-md5') in rows else float('nan')
print("| throughput (wrk) | req/s | x seed | not OK |")
print("|---|---:|---:|---:|")
for (kind, name) in rows:
    if kind == 'wrk':
        rps = med((kind, name), 'rps')
        print(f"| {name} | {rps:.0f} | {rps/seed:.1f} | {med((kind, name), 'not_ok'):.0f} |")
print()
print("| latency (fixed rate) | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | failed | CPU ms / 1k req: service | PostgreSQL | generator |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (kind, name) in rows:
    if kind == 'rate':
        k = (kind, name)
        print(f"| {name}/s | {med(k,'rate'):.0f} | {med(k,'p50'):.3f} | {med(k,'p90'):.3f} | {med(k,'p99'):.3f} | {med(k,'p99.9'):.3f} | {med(k,'failed'):.0f} | {cpu(k,'svc_cpu_ms_per_kreq')} | {cpu(k,'pg_cpu_ms_per_kreq')} | {cpu(k,'gen_cpu_ms_per_kreq')} |")
PY
