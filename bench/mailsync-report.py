#!/usr/bin/python3
"""Render a results-*.json of mailsync-bench.py as the Markdown table of BENCHMARKS.md.

  bench/mailsync-report.py /var/tmp/mailsync-bench/results-d6-m20-s1.json
"""
import json
import sys


def main():
    d = json.load(open(sys.argv[1]))
    r = d["results"]
    print("Tree: %s, %d messages, %.0f MB." % (d["tag"], d["messages"], d["bytes"] / 1e6))
    for cache in ("warm", "cold"):
        setup = r.get("ssh-setup/true/%s" % cache)
        if not any(k.endswith("/" + cache) and not k.startswith("ssh") for k in r):
            continue
        print()
        print("%s cache%s:" % (cache.capitalize(),
              "" if not setup else "; `ssh host true` = %.2f s (paid once per connection by every tool)" % setup["wall"]))
        print()
        print("| phase | tool | wall s (per rep) | durable s (wall + its writeback) | CPU s (both ends) | wire bytes | peak RSS local / remote KiB | wall vs rsync-fast | durable vs rsync-fast | wire vs rsync-seed |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for phase in ("initial", "nochange", "day", "day2"):
            fast = r.get("rsync-fast/%s/%s" % (phase, cache))
            seed = r.get("rsync-seed/%s/%s" % (phase, cache))
            for tool in ("mailsync", "mailsync-old", "mailsync-plain", "mailsync-plain-old",
                         "rsync-fast", "rsync-seed"):
                x = r.get("%s/%s/%s" % (tool, phase, cache))
                if not x:
                    continue
                wr = "%.2f" % (x["wall"] / fast["wall"]) if fast else ""
                dr = "%.2f" % (x["durable"] / fast["durable"]) if fast and fast.get("durable") else ""
                ww = "%.2f" % (x["wire"] / seed["wire"]) if seed and seed["wire"] else ""
                walls = " (%s)" % ", ".join("%.2f" % w for w in x["walls"]) if x.get("walls") else ""
                print("| %s | %s | %.2f%s | %.2f | %.2f | %d | %d / %d | %s | %s | %s |" % (
                    phase, tool, x["wall"], walls, x.get("durable", 0), x["cpu"], x["wire"],
                    x["rss_local_kb"], x["rss_remote_kb"], wr, dr, ww))
    e = r.get("mailsync/empty-tree/warm")
    if e:
        print()
        for phase in ("initial", "nochange", "day"):
            i = r.get("mailsync/%s/warm" % phase)
            if not i:
                continue
            per = (i["rss_local_kb"] - e["rss_local_kb"]) * 1024 / d["messages"]
            per_r = (i["rss_remote_kb"] - e["rss_remote_kb"]) * 1024 / d["messages"]
            print("Memory per message tracked, %s run (peak RSS minus that of a run on an empty "
                  "tree, %d / %d KiB local / remote, over %d messages): sender %.0f bytes, "
                  "receiver %.0f bytes." % (phase, e["rss_local_kb"], e["rss_remote_kb"],
                                            d["messages"], per, per_r))
    if d.get("remote_user"):
        print()
        print("Remote user: %s; load average at the end: %s." % (
            d["remote_user"], d.get("load_at_end", "?")))

if __name__ == "__main__":
    main()
