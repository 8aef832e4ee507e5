#!/usr/bin/python3
"""Deterministic generator of realistic Dovecot Maildir trees, and a "day of activity" mutator.

  mailsync-gen.py generate ROOT [--domains 60] [--mailboxes 20] [--scale 1.0] [--seed 1]
  mailsync-gen.py mutate   ROOT [--seed 2] [--node mx1]

generate: DOMAINS x MAILBOXES mailboxes, each with INBOX + 3 folders (Sent, Archive, Trash),
~150,000 messages at scale 1.0 (~125 per mailbox), log-normal sizes (median ~8 KB, mean
~40 KB, capped at 5 MB), Dovecot file names (<sec>.M<usec>P<pid>.<host>,S=<size>,W=<vsize>
with :2,<flags> in cur/), dovecot-uidlist per folder, dovecot-keywords, subscriptions,
maildirfolder markers, ~1 % of messages copied to another folder as hard links (Dovecot COPY).

mutate: new mail ~1 %, new->cur moves (half of new/), flag changes ~2 %, folder moves ~0.5 %,
expunges ~0.5 %; uidlists of touched folders rewritten (new file + rename, never in place, so
a tree made with `cp -al` stays independent of its base).
Everything is seeded: the same arguments give the same tree.
"""
import argparse
import math
import os
import random

FOLDERS = ["", ".Sent", ".Archive", ".Trash"]
FOLDER_SHARE = [0.6, 0.15, 0.2, 0.05]
WORDS = (
    "the of and to in is for on that with as by this be are from at or it an was have "
    "message meeting report branch office order invoice payment delivery please regards "
    "attached schedule project storage server mail account update week today tomorrow "
    "contract price customer support question answer thanks best team manager sales "
    "отчет филиал письмо договор оплата счет доставка встреча сервер почта пожалуйста"
).split()


def corpus(rng, size=1 << 20):
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "\r\n"
        out.append(line)
        n += len(line.encode())
    return "".join(out).encode()[:size]


def message(rng, text, size):
    hdr = (
        "Return-Path: <sender%d@example.com>\r\nDelivered-To: user@branch.domain.ru\r\n"
        "Received: from smtp-01.domain.ru by storage-01.domain.ru with LMTP id %08x\r\n"
        "From: Sender <sender%d@example.com>\r\nTo: user@branch.domain.ru\r\n"
        "Subject: %s\r\nMessage-ID: <%016x@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        % (
            rng.randint(1, 999),
            rng.getrandbits(32),
            rng.randint(1, 999),
            " ".join(rng.choice(WORDS) for _ in range(5)),
            rng.getrandbits(64),
        )
    ).encode()
    body_len = max(0, size - len(hdr))
    if size > 100_000:
        # Attachment-like: base64 of random bytes (barely compressible).
        import base64

        raw = rng.randbytes(body_len * 3 // 4 + 3)
        b = base64.encodebytes(raw).replace(b"\n", b"\r\n")[:body_len]
    else:
        off = rng.randrange(0, len(text) - 1)
        b = (text[off:] + text)[:body_len]
        while len(b) < body_len:
            b += text[: body_len - len(b)]
    return hdr + b


def size_sample(rng):
    s = int(rng.lognormvariate(math.log(8192), 1.79))
    return max(600, min(s, 5 << 20))


def flags_sample(rng):
    r = rng.random()
    if r < 0.70:
        return "S"
    if r < 0.85:
        return "RS"
    if r < 0.92:
        return "FS"
    if r < 0.95:
        return "aS"
    return ""


def name_for(t, usec, pid, host, size):
    return "%d.M%dP%d.%s,S=%d,W=%d" % (t, usec, pid, host, size, size + size // 40)


def write_uidlist(md, uidvalidity, entries, next_uid):
    """entries: list of (uid, filename). Written to a temp file and renamed."""
    tmp = os.path.join(md, "dovecot-uidlist.gen-tmp")
    with open(tmp, "w") as f:
        f.write("3 V%d N%d G%032x\n" % (uidvalidity, next_uid, uidvalidity * 7919))
        for uid, fn in entries:
            f.write("%d :%s\n" % (uid, fn))
    os.rename(tmp, os.path.join(md, "dovecot-uidlist"))


def read_uidlist(md):
    p = os.path.join(md, "dovecot-uidlist")
    with open(p) as f:
        head = f.readline().split()
        v = int(head[1][1:])
        n = int(head[2][1:])
        entries = []
        for line in f:
            uid, fn = line.rstrip("\n").split(" :", 1)
            entries.append((int(uid), fn))
    return v, n, entries


def generate(root, domains, mailboxes, scale, seed):
    rng = random.Random(seed)
    text = corpus(rng)
    per_mailbox = max(4, int(125 * scale))
    t0 = 1_500_000_000
    total = 0
    for d in range(domains):
        domain = "b%02d.domain.ru" % d
        for m in range(mailboxes):
            home = os.path.join(root, domain, "user%02d" % m)
            maildir = os.path.join(home, "Maildir")
            folder_files = {}
            for fi, folder in enumerate(FOLDERS):
                md = os.path.join(maildir, folder) if folder else maildir
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(md, sub), exist_ok=True)
                if folder:
                    open(os.path.join(md, "maildirfolder"), "w").close()
                n = int(per_mailbox * FOLDER_SHARE[fi] + 0.5)
                entries = []
                files = []
                for i in range(n):
                    size = size_sample(rng)
                    t = t0 + rng.randrange(0, 200_000_000)
                    base = name_for(t, rng.randrange(1_000_000), rng.randrange(1, 99999), "storage-01", size)
                    is_new = folder == "" and rng.random() < 0.05
                    fn = base if is_new else base + ":2," + flags_sample(rng)
                    p = os.path.join(md, "new" if is_new else "cur", fn)
                    with open(p, "wb") as f:
                        f.write(message(rng, text, size))
                    os.chmod(p, 0o600)
                    os.utime(p, (t, t))
                    entries.append((i + 1, fn))
                    files.append((p, fn))
                folder_files[folder] = (md, entries, files)
                total += n
            # Dovecot COPY: ~1 % hard-linked into Archive with the same base name.
            src_md, _, src_files = folder_files[""]
            dst_md, dst_entries, _ = folder_files[".Archive"]
            for p, fn in src_files:
                if rng.random() < 0.01 and "/cur/" in p:
                    os.link(p, os.path.join(dst_md, "cur", fn))
                    dst_entries.append((len(dst_entries) + 1, fn))
                    total += 1
            for folder, (md, entries, _) in folder_files.items():
                write_uidlist(md, t0 + rng.randrange(1000), entries, len(entries) + 1)
            with open(os.path.join(maildir, "dovecot-keywords"), "w") as f:
                f.write("0 $Forwarded\n1 Junk\n")
            with open(os.path.join(maildir, "subscriptions"), "w") as f:
                f.write("Sent\nArchive\nTrash\n")
    return total


def mutate(root, seed, node):
    rng = random.Random(seed)
    text = corpus(random.Random(seed + 1000), 1 << 18)
    maildirs = []
    for domain in sorted(os.listdir(root)):
        if domain.startswith("."):
            continue
        for user in sorted(os.listdir(os.path.join(root, domain))):
            base = os.path.join(root, domain, user, "Maildir")
            for folder in FOLDERS:
                md = os.path.join(base, folder) if folder else base
                if os.path.isdir(os.path.join(md, "cur")):
                    maildirs.append(md)
    counts = dict(new=0, seen=0, flags=0, moves=0, expunges=0)
    t = 1_800_000_000
    for md in maildirs:
        v, n, entries = read_uidlist(md)
        by_base = {fn.split(":")[0]: (uid, fn) for uid, fn in entries}
        changed = False
        cur = sorted(os.listdir(os.path.join(md, "cur")))
        new = sorted(os.listdir(os.path.join(md, "new")))
        # new -> cur (half)
        for fn in new:
            if rng.random() < 0.5:
                os.rename(os.path.join(md, "new", fn), os.path.join(md, "cur", fn + ":2,S"))
                b = fn.split(":")[0]
                if b in by_base:
                    by_base[b] = (by_base[b][0], fn + ":2,S")
                counts["seen"] += 1
                changed = True
        for fn in cur:
            r = rng.random()
            b = fn.split(":")[0]
            if r < 0.02:  # flag change
                info = fn.split(":2,", 1)[1] if ":2," in fn else ""
                nf = "".join(sorted(set(info) ^ {"F"})) if "F" in info or rng.random() < 0.5 else "".join(sorted(set(info) | {"R"}))
                nfn = b + ":2," + nf
                if nfn != fn:
                    os.rename(os.path.join(md, "cur", fn), os.path.join(md, "cur", nfn))
                    if b in by_base:
                        by_base[b] = (by_base[b][0], nfn)
                    counts["flags"] += 1
                    changed = True
            elif r < 0.025:  # expunge
                os.unlink(os.path.join(md, "cur", fn))
                by_base.pop(b, None)
                counts["expunges"] += 1
                changed = True
            elif r < 0.03 and not md.endswith(".Trash"):  # move to Trash
                parent = md if os.path.basename(md).startswith(".") is False else os.path.dirname(md)
                trash = os.path.join(parent, ".Trash")
                dst = os.path.join(trash, "cur", fn)
                if os.path.isdir(os.path.join(trash, "cur")) and not os.path.exists(dst):
                    os.rename(os.path.join(md, "cur", fn), dst)
                    by_base.pop(b, None)
                    tv, tn, te = read_uidlist(trash)
                    te.append((tn, fn))
                    write_uidlist(trash, tv, te, tn + 1)
                    counts["moves"] += 1
                    changed = True
        # new mail ~1 % of the folder (INBOX only)
        if os.path.basename(md) == "Maildir":
            # ~1 % of the whole mailbox (INBOX holds ~60 % of it).
            k = len(entries) / 0.6
            for _ in range(int(k * 0.01) + (1 if rng.random() < (k * 0.01) % 1 else 0)):
                size = size_sample(rng)
                t += 1
                fn = name_for(t, rng.randrange(1_000_000), rng.randrange(1, 99999), node, size)
                p = os.path.join(md, "new", fn)
                with open(p, "wb") as f:
                    f.write(message(rng, text, size))
                os.chmod(p, 0o600)
                os.utime(p, (t, t))
                by_base[fn] = (n, fn)
                n += 1
                counts["new"] += 1
                changed = True
        if changed:
            write_uidlist(md, v, sorted(by_base.values()), n)
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["generate", "mutate"])
    ap.add_argument("root")
    ap.add_argument("--domains", type=int, default=60)
    ap.add_argument("--mailboxes", type=int, default=20)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--node", default="storage-01")
    a = ap.parse_args()
    if a.cmd == "generate":
        n = generate(a.root, a.domains, a.mailboxes, a.scale, a.seed)
        print("generated %d messages" % n)
    else:
        print("mutated: %s" % mutate(a.root, a.seed, a.node))


if __name__ == "__main__":
    main()
