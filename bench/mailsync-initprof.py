#!/usr/bin/python3
"""Initial copies over the benchmark's loopback sshd, tools in turn: A/B of mailsync binaries
and options against rsync-fast on a reduced tree, for profiling the initial copy.

  flock /work/bench.lock bench/mailsync-initprof.py --base /var/tmp/mailsync-bench/base-d6-m20-s1 \\
      --tool new=/work/targets/sync/release/mailsync --tool old=OLD_BINARY+plain --tool rsync-fast \\
      [--trials 5] [--perf new] [--perf-all]

A tool is `rsync-fast` (one whole-tree `rsync -aH --delete`, as mailsync-bench.py runs it) or
NAME=PATH[+plain][@JOBS] (mailsync, `--compress` unless +plain, `--jobs JOBS`, default 2).
Each round removes the previous round's copies, makes an empty destination per tool, waits
until the freed inodes are old enough not to be scanned past (65 s, see mailsync-bench.py)
and runs every tool once, in an order rotated per round. With --keep nothing is removed
until the end (needs the disk for every copy): ext4 without a journal also scans past
inodes freed less than 360 s ago once their inode-table block is dirty again, which the
next copies' creations do, so copies made after a removal get slower one after the other
(round 6: the same binary took 2.4 s, then 6.8 s with 3.5x the CPU). Before every timed run the kernel's
writeback is settled (Dirty + Writeback < 16 MiB); after it the same wait is timed ("flush":
what the run left to write back; durable = wall + flush). CPU = user + sys of both ends
(the remote under /usr/bin/time). Prints medians per tool and the ratio to rsync-fast.
`--perf NAME`: one more run of that tool under `perf record -a` (the whole host, sshd
included; with --call-graph dwarf unless --perf-all), report under --work.
Extra environment for mailsync tools: --env K=V (e.g. MAILSYNC_PHASES=1).
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_bench():
    spec = importlib.util.spec_from_file_location("msbench", os.path.join(HERE, "mailsync-bench.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--tool", action="append", required=True)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/mailsync-bench/initprof")
    ap.add_argument("--remote-user", default="mailbench")
    ap.add_argument("--perf", default=None)
    ap.add_argument("--perf-all", action="store_true")
    ap.add_argument("--pause", type=float, default=65.0)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--keep", action="store_true",
                    help="keep every round's copies until the end (no removal between rounds: "
                         "inodes freed less than 360 s ago slow every creation near them)")
    a = ap.parse_args()
    mb = load_bench()
    for kv in a.env:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    tools = []
    for t in a.tool:
        if t == "rsync-fast":
            tools.append((t, None, False, 2))
            continue
        name, path = t.split("=", 1)
        path, _, jobs = path.partition("@")
        plain = path.endswith("+plain")
        path = path[: -len("+plain")] if plain else path
        tools.append((name, os.path.abspath(path), plain, int(jobs or 2)))
    os.makedirs(a.work, exist_ok=True)
    rtmp = os.path.join(a.work, "remote-tmp")
    os.makedirs(rtmp, exist_ok=True)
    shutil.chown(rtmp, a.remote_user, a.remote_user)
    src = os.path.join(a.work, "src")
    if not os.path.isdir(src):
        subprocess.run(["cp", "-al", a.base, src], check=True)
    sshd = mb.Sshd(a.work)
    results = {t[0]: [] for t in tools}
    plan = [(r, tools[r % len(tools):] + tools[:r % len(tools)]) for r in range(a.trials)]
    if a.perf:
        plan.append(("perf", [t for t in tools if t[0] == a.perf]))
    try:
        for rnd, order in plan:
            if not a.keep or rnd == 0:
                for x in os.listdir(a.work):
                    if x.startswith(("dst-", "state-")):
                        shutil.rmtree(os.path.join(a.work, x), ignore_errors=True)
                freed = time.time()
                mb.settle()
                wait = a.pause - (time.time() - freed)
                if wait > 0:
                    time.sleep(wait)
            for t in order:
                d = os.path.join(a.work, "dst-%s-%s" % (t[0], rnd))
                os.makedirs(d)
                shutil.chown(d, a.remote_user, a.remote_user)
            for name, path, plain, jobs in order:
                dst = os.path.join(a.work, "dst-%s-%s" % (name, rnd))
                state = os.path.join(a.work, "state-%s-%s" % (name, rnd))
                ns = argparse.Namespace(bin=path, bin_old=path, jobs=jobs,
                                        remote_user=a.remote_user)
                tool = "rsync-fast" if path is None else (
                    "mailsync-plain" if plain else "mailsync")
                mb.settle()
                if rnd == "perf":
                    out = os.path.join(a.work, "perf-%s.data" % name)
                    how = ["-a", "-F", "999"] + ([] if a.perf_all else
                                                 ["--call-graph", "dwarf,16384"])
                    perf = subprocess.Popen(["perf", "record", "-q", "-o", out] + how,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                r = mb.run_tool(tool, src, dst, ns, sshd, state,
                                os.path.join(a.work, "t.local"), os.path.join(rtmp, "t.remote"))
                if rnd == "perf":
                    perf.send_signal(2)
                    perf.wait()
                    print("perf data: %s" % out, flush=True)
                    continue
                r["flush"], _ = mb.settle()
                results[name].append(r)
                print("%-8s round %s: wall %.2f s cpu %.2f s flush %.2f s wire %d; %s" % (
                    name, rnd, r["wall"], r["cpu"], r["flush"], r["wire"], mb.load()), flush=True)
    finally:
        sshd.stop()
    ref = statistics.median(r["wall"] for r in results.get("rsync-fast", [])) \
        if results.get("rsync-fast") else None
    for name, rs in results.items():
        if not rs:
            continue
        w = statistics.median(r["wall"] for r in rs)
        c = statistics.median(r["cpu"] for r in rs)
        f = statistics.median(r["flush"] for r in rs)
        print("%-10s n=%d wall median %.2f s (%s), cpu %.2f s, flush %.2f s%s" % (
            name, len(rs), w, " ".join("%.2f" % r["wall"] for r in rs), c, f,
            ", %.2fx rsync-fast" % (w / ref) if ref else ""), flush=True)
    print(mb.load())


if __name__ == "__main__":
    main()
