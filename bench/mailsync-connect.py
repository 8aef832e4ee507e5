#!/usr/bin/env python3
"""Connection set-up of mailsync over the benchmark's loopback sshd (round 14).

A run over a few empty domains is almost only the set-up of its connections: TCP, key
exchange, authentication, the channel, `mailsync serve` started on the remote, the handshake,
and the goodbye. Each binary is timed with --jobs 1 and 3 (one connection per worker), in
turn, and `ssh host true` for comparison (medians of --runs).

    flock /work/bench.lock bench/mailsync-connect.py --bin new=PATH --bin old=PATH [--runs 9]
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "mailsync_bench", os.path.join(HERE, "mailsync-bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--work", default="/var/tmp/mailsync-bench/connect")
    ap.add_argument("--remote-user", default="mailbench")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    os.makedirs(a.work, exist_ok=True)
    sshd = load_bench().Sshd(a.work)
    src = tempfile.mkdtemp(dir=a.work, prefix="src.")
    dst = tempfile.mkdtemp(dir=a.work, prefix="dst.")
    shutil.chown(dst, a.remote_user, a.remote_user)
    doms = ["d%02d.example" % i for i in range(a.domains)]
    for d in doms:
        os.makedirs(os.path.join(src, d, "u", "Maildir", "cur"))
    times = {}
    try:
        for _ in range(a.runs):
            for name, path in bins:
                for jobs in (1, 3):
                    state = os.path.join(a.work, "state-%s-%d" % (name, jobs))
                    c = [path, "--root", src, "--state-dir", state, "--jobs", str(jobs),
                         "--json", "--no-progress", "--remote-root", dst, "-i", sshd.key,
                         "--known-hosts", sshd.kh, "--port", str(sshd.port), "--user",
                         a.remote_user, "--remote-command", "%s serve --no-fence" % path]
                    for d in doms:
                        c += ["--domain", d]
                    c += ["bench-node", "127.0.0.1"]
                    t = time.perf_counter()
                    r = subprocess.run(c, capture_output=True, text=True)
                    times.setdefault((name, jobs), []).append(time.perf_counter() - t)
                    if r.returncode != 0:
                        raise SystemExit("%s failed: %s" % (name, r.stderr[-500:]))
            times.setdefault(("ssh true", 1), []).append(sshd.setup_time(a.remote_user))
    finally:
        sshd.stop()
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    for (name, jobs), v in times.items():
        what = name if name == "ssh true" else "%s --jobs %d" % (name, jobs)
        print("%-16s median %5.1f ms (%s)" % (
            what, 1000 * statistics.median(v), " ".join("%.0f" % (1000 * x) for x in v)))


if __name__ == "__main__":
    main()
