#!/usr/bin/python3
"""mailsync's memory per message, strictly: the sender's own peak RSS (VmHWM, polled; the
receiver is a separate process) on one domain holding every message of the tree, minus the
peak on an empty domain, divided by the messages. With every message in the one domain in
flight this is the per-message state, not diluted by domains waiting their turn.

  bench/mailsync-mem.py [--mailboxes 60] [--scale 1] [--work /var/tmp/mailsync-bench/mem]
                        [--bin /work/targets/sync/release/mailsync]

Phases as in mailsync-bench.py: initial copy, no-change run, run after a day of activity.
Local transport (a child `mailsync serve`), so no sshd is needed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.path.join(HERE, "mailsync-gen.py")


def run_hwm(cmd):
    """Run cmd; return (its own peak RSS in KiB, stdout)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm = 0
    status = "/proc/%d/status" % p.pid
    while p.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.001)
    so, se = p.communicate()
    if p.returncode != 0:
        print(se[-2000:], file=sys.stderr)
        raise SystemExit("mailsync failed")
    return hwm, so


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailboxes", type=int, default=60)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--work", default="/var/tmp/mailsync-bench/mem")
    ap.add_argument("--bin", default="/work/targets/sync/release/mailsync")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    base = os.path.join(a.work, "base-m%d-s%g" % (a.mailboxes, a.scale))
    if not os.path.isdir(base):
        sh = [sys.executable, GEN, "generate", base + ".tmp", "--domains", "1", "--mailboxes",
              str(a.mailboxes), "--scale", str(a.scale)]
        subprocess.run(sh, check=True, stdout=subprocess.DEVNULL)
        os.rename(base + ".tmp", base)
    domain = sorted(os.listdir(base))[0]
    nmsg = sum(len(fs) for d, _, fs in os.walk(os.path.join(base, domain))
               if os.path.basename(d) in ("cur", "new"))
    res = {}
    for rep in range(a.reps):
        src, dst, st = (os.path.join(a.work, x) for x in ("src", "dst", "state"))
        for d in (src, dst, st):
            shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["cp", "-al", base, src], check=True)
        os.makedirs(dst)
        cmd = [a.bin, "--root", src, "--state-dir", st, "--domain", domain, "--jobs", "1",
               "--json", "--no-progress", "mem-node", dst]
        for phase in ("initial", "nochange", "day"):
            if phase == "day":
                subprocess.run([sys.executable, GEN, "mutate", src, "--seed", "7"], check=True,
                               stdout=subprocess.DEVNULL)
            hwm, out = run_hwm(cmd)
            rep_ = json.loads(out)
            if not rep_["ok"]:
                raise SystemExit("run not ok: %s" % rep_["per_domain"][0]["errors"][:3])
            res.setdefault(phase, []).append(hwm)
        empty, edst, est = (os.path.join(a.work, x) for x in ("empty", "edst", "estate"))
        for d in (empty, edst, est):
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(empty, domain))
        os.makedirs(edst)
        hwm, _ = run_hwm([a.bin, "--root", empty, "--state-dir", est, "--domain", domain,
                          "--jobs", "1", "--json", "--no-progress", "mem-node", edst])
        res.setdefault("empty", []).append(hwm)
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print("one domain, %d messages; sender peak RSS (median of %d), load %s:" % (
        nmsg, a.reps, load))
    print("  empty domain: %d KiB" % med["empty"])
    for phase in ("initial", "nochange", "day"):
        print("  %-8s %d KiB -> %.0f bytes per message" % (
            phase, med[phase], (med[phase] - med["empty"]) * 1024 / nmsg))


if __name__ == "__main__":
    main()
