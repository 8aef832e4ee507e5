#!/usr/bin/python3
"""mailsync vs rsync, side by side over the same loopback sshd.

  bench/mailsync-bench.py [--scale 0.1] [--domains 60] [--mailboxes 20] [--reps 3]
                          [--work /var/tmp/mailsync-bench] [--bin target/release/mailsync]
                          [--cold]

Tools (each from an empty destination, on a `cp -al` copy of the same generated base tree):
  mailsync     mailsync --compress --jobs 2 (one SSH session per worker)
  mailsync-plain  the same without --compress (opt-in: --tools mailsync-plain,...)
  rsync-seed   the seed's mailrsync.pl: per domain `rsync -H --delete-during -azz`, one thread
               per pair of domains, all threads at once
  rsync-fast   rsync's fastest mode here: one whole-tree `rsync -aH --delete` (no compression
               on loopback)
Phases: initial copy, no-change run (--nochange-reps times), run after a day of activity
(mailsync-gen.py mutate). Each tool has its own source copy and destination; within each phase
the tools take turns (order rotated per rep), so load changes on a shared machine hit all alike.
Before every timed run of every tool: `sync`, then wait until Dirty + Writeback in
/proc/meminfo are below 16 MiB (no run pays for an earlier one's writeback); after each run
the same wait is timed as "flush" (the writeback the run left: rsync never fsyncs, mailsync
makes every file durable before it returns), and wall + flush is reported as "durable".
Per phase: wall, CPU (user+sys of both ends: the remote side runs under /usr/bin/time via
--remote-command / --rsync-path), wire bytes (protocol bytes: mailsync's wire_bytes, rsync's
--stats "Total bytes sent + received"), peak RSS of each end. Medians over --reps.
Remote user (--remote-user, default `mailbench`): a dedicated system user with /bin/sh as
its shell, created if missing, owning the destination. sshd runs every remote command through
the user's shell; root's bash here sources ~/.bashrc (pyenv init, ~0.5 s) for each one, which
is not what a storage node's replication user pays. Both tools use the same user.
`--remote-user root` measures the old way.
Needs: root (sshd, useradd), /usr/sbin/sshd, rsync, /usr/bin/time.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import pwd
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "mailsync-gen.py")
TIMEFMT = "%e %U %S %M"
# Seconds after which ext4 (no journal) no longer treats a freed inode as "recently deleted":
# 60 s, but 360 s while the inode's inode-table block is dirty, and the next copies' own
# creations dirty those blocks again (round 6: with 65 s, copies made after the first one of
# a rep took up to 3.5x the CPU). Default of --age.
RECENT_FREE = 365


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Sshd:
    def __init__(self, work):
        self.dir = os.path.join(work, "ssh")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        hk = os.path.join(self.dir, "host_key")
        self.key = os.path.join(self.dir, "client_key")
        for k in (hk, self.key):
            if not os.path.exists(k):
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k])
        shutil.copy(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
        self.port = free_port()
        conf = os.path.join(self.dir, "sshd_config")
        with open(conf, "w") as f:
            f.write(
                "Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\n"
                "AuthorizedKeysFile %s/authorized_keys\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "StrictModes no\nUseDNS no\nPrintMotd no\nLogLevel FATAL\nMaxStartups 100\n"
                % (self.port, hk, self.dir)
            )
        self.kh = os.path.join(self.dir, "known_hosts")
        with open(hk + ".pub") as f:
            pub = " ".join(f.read().split()[:2])
        with open(self.kh, "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (self.port, pub))
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", conf])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.ssh = (
            "ssh -p %d -i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes -F /dev/null" % (self.port, self.key, self.kh)
        )

    def setup_time(self, user):
        """Wall time of `ssh host true`: the per-connection cost every tool pays (key
        exchange, authentication, the remote user's shell start-up)."""
        t = time.time()
        subprocess.run(self.ssh.split() + ["%s@127.0.0.1" % user, "true"], check=True)
        return time.time() - t

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def read_times(path):
    """Lines of 'wall user sys maxrss_kb' -> (cpu, max rss kb)."""
    cpu, rss = 0.0, 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 4:
                    try:
                        cpu += float(p[1]) + float(p[2])
                        rss = max(rss, int(p[3]))
                    except ValueError:
                        pass
        os.unlink(path)
    return cpu, rss


def rsync_stats(out):
    sent = recv = 0
    for line in out.splitlines():
        if line.startswith("Total bytes sent:"):
            sent += int(line.split(":")[1].replace(",", "").strip())
        elif line.startswith("Total bytes received:"):
            recv += int(line.split(":")[1].replace(",", "").strip())
    return sent + recv


def run_tool(tool, src, dst, a, sshd, state, tfile_l, tfile_r):
    domains = sorted(d for d in os.listdir(src) if not d.startswith("."))
    timed = ["/usr/bin/time", "-a", "-o", tfile_l, "-f", TIMEFMT]
    t0 = time.time()
    wire = 0
    data = None
    if tool.startswith("mailsync"):
        # "mailsync-old" / "mailsync-plain-old": the same with --bin-old (before/after in one run).
        binary = a.bin_old if tool.endswith("-old") else a.bin
        compress = [] if tool.startswith("mailsync-plain") else ["--compress"]
        cmd = timed + [
            binary, "--root", src, "--remote-root", dst, "--state-dir", state,
        ] + (["--jobs", str(a.jobs)] if a.jobs else []) + compress + [
            "--json", "--no-progress", "-i", sshd.key, "--known-hosts", sshd.kh,
            "--port", str(sshd.port), "--user", a.remote_user, "--remote-command",
            "/usr/bin/time -a -o %s -f '%s' %s serve --no-fence" % (tfile_r, TIMEFMT, binary),
        ]
        for d in domains:
            cmd += ["--domain", d]
        cmd += ["bench-node", "127.0.0.1"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
            raise SystemExit("mailsync failed")
        rep = json.loads(r.stdout)
        wire = rep["wire_bytes"]
        data = rep["bytes_sent"]
    else:
        rpath = "/usr/bin/time -a -o %s -f '%s' rsync" % (tfile_r, TIMEFMT)
        if tool == "rsync-seed":
            jobs = [
                ["rsync", "-H", "--delete-during", "-azz", "--stats", "-e", sshd.ssh,
                 "--rsync-path", rpath, "%s/%s/" % (src, d),
                 "%s@127.0.0.1:%s/%s/" % (a.remote_user, dst, d)]
                for d in domains
            ]
            # The seed's mailrsync.pl: one thread per pair of domains, all threads at once,
            # each thread syncing its two domains one after the other.
            import threading

            outs = []
            failed = []

            def pair_worker(pair):
                for j in pair:
                    r = subprocess.run(timed + j, capture_output=True, text=True)
                    if r.returncode != 0:
                        failed.append(r.stderr[-500:])
                    outs.append(r.stdout)

            threads = [threading.Thread(target=pair_worker, args=(jobs[i:i + 2],))
                       for i in range(0, len(jobs), 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if failed:
                raise SystemExit("rsync failed: %s" % failed[0])
            wire = sum(rsync_stats(o) for o in outs)
        else:
            r = subprocess.run(
                timed + ["rsync", "-aH", "--delete", "--stats", "-e", sshd.ssh, "--rsync-path",
                         rpath, "--exclude", "/.mailsync", src + "/",
                         "%s@127.0.0.1:%s/" % (a.remote_user, dst)],
                capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-2000:], file=sys.stderr)
                raise SystemExit("rsync failed")
            wire = rsync_stats(r.stdout)
    wall = time.time() - t0
    cl, rl = read_times(tfile_l)
    cr, rr = read_times(tfile_r)
    return dict(wall=wall, cpu=cl + cr, wire=wire, rss_local_kb=rl, rss_remote_kb=rr, data=data)


def load():
    with open("/proc/loadavg") as f:
        return "load %s" % " ".join(f.read().split()[:3])


def settle(limit_kb=16384, timeout=300):
    """`sync`, then wait until the kernel's dirty and writeback pages are (nearly) gone:
    every timed run starts with no writeback left by an earlier one. rsync never fsyncs, so
    its data is still dirty when it returns; without this, the next run (of any tool) paid
    for it, and which tool did depended on the order (round 4: rsync-fast's initial copy
    took 21.7-66.1 s). Returns the seconds waited and the dirty KiB left."""
    t0 = time.time()
    left = 0
    while True:
        subprocess.run(["sync"])
        with open("/proc/meminfo") as f:
            mi = dict((l.split(":")[0], int(l.split()[1])) for l in f if l.split()[1:2])
        left = mi.get("Dirty", 0) + mi.get("Writeback", 0)
        if left <= limit_kb or time.time() - t0 > timeout:
            return time.time() - t0, left
        time.sleep(0.5)


def drop_caches():
    settle()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--domains", type=int, default=60)
    ap.add_argument("--mailboxes", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/mailsync-bench")
    ap.add_argument("--bin", default=None)
    ap.add_argument("--bin-old", default=None,
                    help="binary of the tools mailsync-old / mailsync-plain-old")
    ap.add_argument("--jobs", type=int, default=None,
                    help="mailsync --jobs (default: mailsync's own default)")
    ap.add_argument("--cold", action="store_true", help="also one cold-cache rep (drops caches)")
    ap.add_argument("--tools", default="mailsync,rsync-seed,rsync-fast")
    ap.add_argument("--remote-user", default="mailbench")
    ap.add_argument("--phases", default="initial,nochange,day")
    ap.add_argument("--nochange-reps", type=int, default=3,
                    help="no-change runs per rep (cheap; medians)")
    ap.add_argument("--rotate", type=int, default=0,
                    help="start the tools' turn order at this offset")
    ap.add_argument("--age", type=float, default=RECENT_FREE,
                    help="seconds between removing a rep's copies and the next rep's initial "
                         "copies (freed inodes must stop being 'recently deleted')")
    ap.add_argument("--quick-check", action="store_true",
                    help="check copies by size and mtime, not by content")
    a = ap.parse_args()
    if a.bin is None:
        tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target"))
        a.bin = os.path.abspath(os.path.join(tgt, "release", "mailsync"))
    os.makedirs(a.work, exist_ok=True)
    tag = "d%d-m%d-s%g" % (a.domains, a.mailboxes, a.scale)
    base = os.path.join(a.work, "base-" + tag)
    if not os.path.isdir(base):
        sh(["/usr/bin/python3", GEN, "generate", base + ".tmp", "--domains", str(a.domains),
            "--mailboxes", str(a.mailboxes), "--scale", str(a.scale)])
        os.rename(base + ".tmp", base)
    nmsg = int(subprocess.run(
        "find %s -path '*/cur/*' -o -path '*/new/*' | wc -l" % base, shell=True,
        capture_output=True, text=True).stdout)
    size = subprocess.run(["du", "-sb", base], capture_output=True, text=True).stdout.split()[0]
    # The remote user and what it must own.
    rtmp = os.path.join(a.work, "remote-tmp")
    home = os.path.join(a.work, "home-" + a.remote_user)
    if a.remote_user != "root":
        try:
            pwd.getpwnam(a.remote_user)
        except KeyError:
            sh(["useradd", "--system", "--no-create-home", "--home-dir", home, "--shell",
                "/bin/sh", a.remote_user])
            # Key login only, but not a locked account (sshd refuses those).
            sh(["usermod", "-p", "*", a.remote_user])
    for d in (rtmp, home):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, a.remote_user, a.remote_user)
    sshd = Sshd(a.work)
    results = {}
    try:
        reps = [(i, False) for i in range(a.reps)]
        for rep, cold in reps:
            setup = statistics.median(sshd.setup_time(a.remote_user) for _ in range(3))
            results.setdefault(("ssh-setup", "true", "cold" if cold else "warm"), []).append(
                dict(wall=setup, cpu=0.0, wire=0, rss_local_kb=0, rss_remote_kb=0, data=None))
            print("ssh setup (ssh %s@host true) rep %d: %.2fs; %s" % (
                a.remote_user, rep, setup, load()), flush=True)
            # Every tool has its own source copy and destination, and the tools take turns
            # within each phase (order rotated per rep): a change in the load of this shared
            # machine hits all of them alike.
            tools = a.tools.split(",")
            k = (rep + a.rotate) % len(tools)
            tools = tools[k:] + tools[:k]
            tl, tr = os.path.join(a.work, "t.local"), os.path.join(rtmp, "t.remote")
            dirs = {}
            for tool in tools:
                src, dst, state = (os.path.join(a.work, "%s-%s" % (x, tool))
                                   for x in ("src", "dst", "state"))
                for d in (src, dst, state):
                    shutil.rmtree(d, ignore_errors=True)
            freed = time.time()
            for tool in tools:
                src, dst, state = (os.path.join(a.work, "%s-%s" % (x, tool))
                                   for x in ("src", "dst", "state"))
                sh(["cp", "-al", base, src])
                os.makedirs(dst)
                shutil.chown(dst, a.remote_user, a.remote_user)
                dirs[tool] = (src, dst, state)
            # ext4 without a journal (this host) skips, on every inode allocation, each free
            # inode of the group freed less than 60 s ago (300 s while its inode-table block
            # is dirty), one buffer-cache lookup each: right after the previous rep's copies
            # (3 x 160,000 inodes) are removed, every file creation of the next initial copy
            # scans past them (perf: 36 % of a copy's CPU). Clean blocks, then let them age.
            settle()
            wait = a.age - (time.time() - freed)
            if wait > 0 and a.reps > 0:
                print("waiting %.0f s for the inodes freed by the previous rep to age" % wait,
                      flush=True)
                time.sleep(wait)
            phases = [(p, False) for p in a.phases.split(",")]
            if a.cold and rep == a.reps - 1:
                # Cold cache (caches dropped before every run), on the same copies: a no-change
                # run, then a second day of activity (seed 8). The initial copy is measured warm
                # only (a cold one would cost another full copy per tool).
                phases += [("nochange", True), ("day2", True)]
            for phase, cold in phases:
                if phase in ("day", "day2"):
                    for tool in tools:
                        sh(["/usr/bin/python3", GEN, "mutate", dirs[tool][0], "--seed",
                            "7" if phase == "day" else "8"], stdout=subprocess.DEVNULL)
                for turn in range(a.nochange_reps if phase == "nochange" and not cold else 1):
                    for tool in tools:
                        src, dst, state = dirs[tool]
                        # No tool pays for the previous one's writeback (mailsync fsyncs, and
                        # an fsync on ext4 waits for other dirty data too; rsync never fsyncs).
                        waited, left = settle()
                        if cold:
                            drop_caches()
                        # BENCH_PERF=DIR: a system-wide profile of each mailsync-plain day run
                        # (perf record -a -g), in DIR/perf-day-REP.data.
                        perf = None
                        if os.environ.get("BENCH_PERF") and phase == "day" and tool == "mailsync-plain":
                            perf = subprocess.Popen(
                                ["perf", "record", "-a", "-g", "-F", "1999", "-o",
                                 os.path.join(os.environ["BENCH_PERF"], "perf-day-%d.data" % rep)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            time.sleep(1.0)
                        r = run_tool(tool, src, dst, a, sshd, state, tl, tr)
                        if perf:
                            perf.send_signal(2)
                            perf.wait()
                        # The writeback this run left behind (rsync never fsyncs; mailsync
                        # made its files durable before it returned): timed apart, so that
                        # "wall + flush" is the time until the copy is on disk.
                        r["flush"], _ = settle()
                        r["durable"] = r["wall"] + r["flush"]
                        key = (tool, phase, "cold" if cold else "warm")
                        results.setdefault(key, []).append(r)
                        print("%-10s %-8s %-4s rep %d: %s; %s; settled %.1fs, dirty %d KiB" % (
                            tool, phase, key[2], rep, r, load(), waited, left), flush=True)
            for tool in tools:
                src, dst, _ = dirs[tool]
                # Check: the copy equals the source (names, sizes, mtimes; contents too
                # unless --quick-check). The contents of the Maildirs' tmp/ are not mail:
                # never copied by mailsync, which keeps its control files' spares there.
                diff = subprocess.run(
                    ["rsync", "-anH", "--no-o", "--no-g", "--delete", "--exclude", "/.mailsync",
                     "--exclude", "tmp/*", "--itemize-changes"] + ([] if a.quick_check else ["--checksum"]) +
                    [src + "/", dst + "/"], capture_output=True, text=True).stdout
                changed = [l for l in diff.splitlines() if l and not l.startswith(".d")]
                if changed:
                    print("WARNING: %s left differences: %s" % (tool, changed[:5]), flush=True)
                else:
                    print("%s: copy equal to the source" % tool, flush=True)
                shutil.rmtree(dst, ignore_errors=True)
        # Empty-tree baseline for mailsync's memory per message tracked.
        empty = os.path.join(a.work, "empty")
        empty_dst = os.path.join(a.work, "empty-dst")
        for d in (empty, empty_dst, os.path.join(a.work, "state")):
            shutil.rmtree(d, ignore_errors=True)
        for d in sorted(x for x in os.listdir(base) if not x.startswith(".")):
            os.makedirs(os.path.join(empty, d))
        os.makedirs(empty_dst)
        shutil.chown(empty_dst, a.remote_user, a.remote_user)
        if "mailsync" in a.tools.split(","):
            r = run_tool("mailsync", empty, empty_dst, a, sshd, os.path.join(a.work, "state"),
                         os.path.join(a.work, "t.local"), os.path.join(rtmp, "t.remote"))
            results[("mailsync", "empty-tree", "warm")] = [r]
            print("mailsync on an empty tree: %s" % r, flush=True)
    finally:
        sshd.stop()
    summary = {"messages": nmsg, "bytes": int(size), "tag": tag, "results": {},
               "remote_user": a.remote_user, "load_at_end": load()}
    for (tool, phase, cache), rs in sorted(results.items()):
        med = {k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [0])
               for k in ("wall", "cpu", "wire", "rss_local_kb", "rss_remote_kb", "flush",
                         "durable")}
        med["walls"] = [round(r["wall"], 2) for r in rs]
        summary["results"]["%s/%s/%s" % (tool, phase, cache)] = dict(med, n=len(rs))
    out = os.path.join(a.work, "results-%s.json" % tag)
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
