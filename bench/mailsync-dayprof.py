#!/usr/bin/python3
"""Day-of-activity run of mailsync, isolated, for profiling and A/B comparisons of binaries.

  bench/mailsync-dayprof.py --base /var/tmp/mailsync-bench/base-d60-m20-s1 \\
      --bin new=/work/targets/sync/release/mailsync --bin old=/var/tmp/mailsync-bench/mailsync-938c8bd \\
      [--trials 5] [--work /var/tmp/mailsync-bench/prof] [--perf old]

Fixture (made once under --work/TAG, with the first binary): a `cp -al` copy of the base tree,
an initial copy to a local destination (local transport: `mailsync serve` as a child, no SSH),
two no-change runs (so that every cached listing is stable), then a `cp -al` of the source
mutated by `mailsync-gen.py mutate --seed 7` (the benchmark's day). Each trial copies the
destination (`cp -al`) and the state directory, then times one day run; binaries take turns.
Before each trial: `rm -rf` of the previous copy, `sync`, a pause (`--pause`, default 6 s),
copy, `sync`. ext4 without a journal treats inodes freed less than 60 s ago (300 s while
their inode-table block is dirty) as "recently deleted" and scans past them on every file
creation: with the default pause the directories freed by the previous trial's `rm -rf`
still weigh on the receiver's file creations (round 5 profile: ~10 % of the CPU); use
`--pause 65` for figures, the default for quick A/Bs where both binaries pay alike.
Prints per binary the median wall and CPU (both ends: the receiver is a child) and the
phases of the run (MAILSYNC_PHASES=1: milliseconds summed over domains, both workers).
`--perf NAME`: one more trial of that binary under `perf record -g --call-graph dwarf`.
Run it under `flock /work/bench.lock`.
"""
import argparse
import collections
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "mailsync-gen.py")


SSH = None  # (Sshd, remote user) with --ssh


def load_bench():
    import importlib.util
    spec = importlib.util.spec_from_file_location("msbench", os.path.join(HERE, "mailsync-bench.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def cmd(binary, src, dst, state, jobs=2, compress=False):
    doms = sorted(d for d in os.listdir(src) if not d.startswith("."))
    c = [binary, "--root", src, "--state-dir", state, "--jobs", str(jobs), "--json",
         "--no-progress"] + (["--compress"] if compress else [])
    if SSH:
        sshd, user = SSH
        c += ["--remote-root", dst, "-i", sshd.key, "--known-hosts", sshd.kh, "--port",
              str(sshd.port), "--user", user, "--remote-command", "%s serve --no-fence" % binary]
    for d in doms:
        c += ["--domain", d]
    return c + (["bench-node", "127.0.0.1"] if SSH else ["bench-node", dst])


def run(c, env=None, prefix=()):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(list(prefix) + c, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit("mailsync failed: %s %s" % (p.stdout[-1000:], p.stderr[-1000:]))
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, json.loads(p.stdout), p.stderr


def cpu_times():
    """(busy, idle) CPU seconds of the whole host so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / hz, idle / hz


def cpu_times_since(s0):
    s1 = cpu_times()
    return s1[0] - s0[0], s1[1] - s0[1]


def phases(stderr):
    tot = collections.defaultdict(collections.Counter)
    for line in stderr.splitlines():
        if "phases" not in line:
            continue
        side = "receiver" if line.startswith("serve") else "sender"
        for k, v in re.findall(r"(\S+)=([\d.]+)", line):
            tot[side][k] += float(v)
    return {s: {k: round(v) for k, v in c.items()} for s, c in tot.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--bin", action="append", required=True,
                    help="NAME=PATH[@JOBS] (--jobs of that binary's runs, default 2)")
    ap.add_argument("--ssh", action="store_true",
                    help="over a loopback sshd as mailsync-bench.py runs it (remote user "
                         "mailbench; fixture under --work/ssh-TAG)")
    ap.add_argument("--compress", action="store_true")
    ap.add_argument("--pause", type=float, default=6.0,
                    help="seconds between removing the previous trial's copy and the next")
    ap.add_argument("--perf-all", action="store_true",
                    help="--perf records the whole system (both ends, sshd), no call graphs")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--work", default="/var/tmp/mailsync-bench/prof")
    ap.add_argument("--perf", default=None, help="NAME of a binary to profile once")
    ap.add_argument("--perf-args", default=None,
                    help="arguments of `perf record` for --perf instead of the defaults, e.g. "
                         "\"-u mailbench -F 999 --call-graph dwarf,16384\" (the receivers)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="sync and drop the page, dentry and inode caches before every trial "
                         "(cold; the full benchmark's day run is partly cold: its four trees "
                         "do not all fit in memory)")
    ap.add_argument("--own-fixture", action="store_true",
                    help="one fixture per binary, made by that binary (under --work/TAG-NAME): "
                         "each starts from the records and scan caches it writes itself (a "
                         "record format change); the default is one fixture made by the first")
    ap.add_argument("--batch", action="store_true",
                    help="make every trial's copy first, then wait --pause once (the inodes "
                         "the removals freed age: as in mailsync-bench.py, where no removal "
                         "precedes a day run), then run the trials in turn")
    ap.add_argument("--own-control", action="store_true",
                    help="each trial's destination gets its own control files (copies, not "
                         "links to the fixture's): replacing them then frees inodes, as in "
                         "the full benchmark; use with --batch --pause 370")
    a = ap.parse_args()
    bins = []
    for b in a.bin:
        n, p = b.split("=", 1)
        p, _, j = p.partition("@")
        bins.append((n, p, int(j or 2)))
    global SSH
    fix = os.path.join(a.work, os.path.basename(a.base.rstrip("/")))
    sshd = None
    if a.ssh:
        sshd = load_bench().Sshd(a.work)
        SSH = (sshd, "mailbench")
        fix = os.path.join(a.work, "ssh-" + os.path.basename(a.base.rstrip("/")))
    try:
        trials(a, bins, fix)
    finally:
        if sshd:
            sshd.stop()


def fixture(a, binary, fix):
    src, dst, state, day = (os.path.join(fix, x) for x in ("src", "dst", "state", "srcday"))
    if not os.path.isdir(day):
        shutil.rmtree(fix, ignore_errors=True)
        os.makedirs(dst)
        if SSH:
            shutil.chown(dst, SSH[1], SSH[1])
        subprocess.run(["cp", "-al", a.base, src], check=True)
        for i in range(3):
            w, c, rep, _ = run(cmd(binary, src, dst, state))
            print("fixture run %d: %.2fs, %d files sent" % (i, w, rep["files_sent"]), flush=True)
            time.sleep(3)
        subprocess.run(["cp", "-al", src, day + ".tmp"], check=True)
        subprocess.run([sys.executable, GEN, "mutate", day + ".tmp", "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
        os.rename(day + ".tmp", day)
    return dst, state, day


def own_control_files(dst):
    """Give the copy its own control files (copies, not links to the fixture's), so that
    replacing them frees their inodes, as in the full benchmark, whose destination is a real
    copy (a `cp -al` copy only drops a link: no inode is freed, no eviction paid)."""
    for d, _, files in os.walk(dst):
        dst_st = os.lstat(d)
        for f in files:
            if f.startswith("dovecot") or f == "subscriptions":
                p = os.path.join(d, f)
                st = os.lstat(p)
                tmp = p + ".own"
                shutil.copy2(p, tmp)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.replace(tmp, p)
        # The directory's mtime as it was: the receiver's cached listing of it stays valid.
        os.utime(d, ns=(dst_st.st_atime_ns, dst_st.st_mtime_ns))


def trials(a, bins, fix):
    # One fixture made by the first binary, or (--own-fixture) one per binary, made by it:
    # each binary then starts from the records and caches it writes itself.
    fx = {}
    for n, p, _ in bins:
        if a.own_fixture:
            fx[n] = fixture(a, p, fix + "-" + n)
        else:
            fx[n] = fx.get(bins[0][0]) or fixture(a, bins[0][1], fix)
    t = os.path.join(fix, "t")
    results = collections.defaultdict(list)
    plan = [(n, p, j, ()) for _ in range(a.trials) for n, p, j in bins]
    if a.perf:
        out = os.path.join(a.work, "perf-%s.data" % a.perf)
        n, p, j = [b for b in bins if b[0] == a.perf][0]
        how = ("-a", "-F", "999") if a.perf_all else ("-F", "1999", "--call-graph", "dwarf,16384")
        if a.perf_args:
            how = tuple(a.perf_args.split())
        plan.append((a.perf + "+perf", p, j, ("perf", "record") + how + ("-o", out, "--")))
    if a.batch:
        shutil.rmtree(t, ignore_errors=True)
        os.makedirs(t)
        subprocess.run(["sync"])
        freed = time.time()
        for k in range(len(plan)):
            dst, state, _ = fx[plan[k][0].split("+")[0]]
            os.makedirs(os.path.join(t, str(k)))
            subprocess.run(["cp", "-al", dst, os.path.join(t, str(k), "dst")], check=True)
            subprocess.run(["cp", "-a", state, os.path.join(t, str(k), "state")], check=True)
            if a.own_control:
                own_control_files(os.path.join(t, str(k), "dst"))
        subprocess.run(["sync"])
        time.sleep(max(0.0, a.pause - (time.time() - freed)))
    for k, (name, path, jobs, prefix) in enumerate(plan):
        dst, state, day = fx[name.split("+")[0]]
        if a.batch:
            tk = os.path.join(t, str(k))
            subprocess.run(["sync"])
        else:
            tk = t
            shutil.rmtree(t, ignore_errors=True)
            subprocess.run(["sync"])
            time.sleep(a.pause)
            os.makedirs(t)
            subprocess.run(["cp", "-al", dst, os.path.join(t, "dst")], check=True)
            subprocess.run(["cp", "-a", state, os.path.join(t, "state")], check=True)
            if a.own_control:
                own_control_files(os.path.join(t, "dst"))
            subprocess.run(["sync"])
        if a.drop_caches:
            subprocess.run(["sync"])
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        env = dict(os.environ, MAILSYNC_PHASES="1")
        s0 = cpu_times()
        w, c, rep, err = run(cmd(path, day, os.path.join(tk, "dst"), os.path.join(tk, "state"),
                                 jobs, a.compress), env=env, prefix=prefix)
        busy, idle = cpu_times_since(s0)
        results[name].append((w, c, busy))
        print("%-10s wall %.2fs cpu %.2fs host busy %.2fs idle %.2fs sent %d renames %d "
              "deletes %d; %s" % (name, w, c, busy, idle, rep["files_sent"], rep["renames"],
                                  rep["deletes"], phases(err)), flush=True)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    for name, v in results.items():
        print("%-10s n=%d wall median %.2fs (%s), cpu median %.2fs, host busy median %.2fs; "
              "load %s" % (name, len(v), statistics.median(x[0] for x in v),
                           " ".join("%.2f" % x[0] for x in v),
                           statistics.median(x[1] for x in v),
                           statistics.median(x[2] for x in v), load))
    shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    main()
