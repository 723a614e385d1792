#!/usr/bin/env python3
"""Where one `pollhook once --send` pass spends its time (benches/once/run.sh
runs this with BREAKDOWN=1). Python 3 stdlib only.

  breakdown.py strace TRACE
      TRACE from `strace -f -ttt -T -s 40 -o TRACE pollhook once --send ...`.
      A markdown table: start-up, config and store open, the polls (split
      into those answered 200, which are stored, and 304), the deliveries
      and the end, each with its share of the wall time and the
      fsync-family calls in it. strace slows every system call down (a lot
      for a futex-heavy tokio program), so its absolute figures are larger
      than untraced: the shares and the counts are what it is for.

  breakdown.py log STDERR START END
      STDERR of `pollhook --log-level debug once --send ...`, START and END
      the wall clock (Unix seconds) just before exec and after exit. The
      same phases, untraced, from the timestamps of sled's, hyper's and
      pollhook's log lines (debug logging costs a little itself).
"""

import re
import sys

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
DURATION = re.compile(r"<(\d+\.\d+)>\s*$")
SYNC = re.compile(r"(?:^|<\.\.\. )(fsync|fdatasync|sync_file_range)\b")
STATUS = re.compile(r'"HTTP/1\.1 (\d{3})')


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "log":
        return from_log(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    if len(sys.argv) >= 2 and sys.argv[1] == "strace":
        del sys.argv[1]
    path = sys.argv[1]
    start = end = None
    config_at = None
    requests = []  # [kind, sent_at, status, answered_at]
    syncs = []  # (at, seconds, name)
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = LINE.match(raw)
            if not m:
                continue
            at, rest = float(m.group(2)), m.group(3)
            if start is None:
                start = at
            end = at
            if config_at is None and rest.startswith("openat(") and ".toml" in rest:
                config_at = at
            if ('"GET /' in rest or '"POST /hook' in rest) and (
                    rest.startswith(("writev(", "write(", "sendto(", "sendmsg("))):
                requests.append(["POST" if "POST /hook" in rest else "GET", at, None, None])
                continue
            status = STATUS.search(rest)
            if status and requests and requests[-1][2] is None:
                requests[-1][2] = int(status.group(1))
                requests[-1][3] = at
                continue
            sync = SYNC.search(rest)
            if sync and "unfinished" not in rest:
                d = DURATION.search(rest)
                syncs.append((at, float(d.group(1)) if d else 0.0, sync.group(1)))
    gets = [r for r in requests if r[0] == "GET"]
    posts = [r for r in requests if r[0] == "POST"]
    if not gets:
        sys.exit("no GET found in the trace")
    total = end - start
    first_get = gets[0][1]
    last_get = gets[-1][3] or gets[-1][1]
    # The deliveries run from the first commit on, beside the later polls.
    last_post = max([last_get] + [post[3] or post[1] for post in posts])
    during = sum(1 for post in posts if post[1] <= last_get)
    phases = [
        ("process start-up (exec to reading the config)", start, config_at or first_get),
        ("config parse, store open (sled), HTTP client", config_at or start, first_get),
        (f"polls: {len(gets)} GETs (concurrent), with commits, and {during} of the"
         f" {len(posts)} POSTs beside them", first_get, last_get),
        (f"the other {len(posts) - during} POSTs, after the last GET", last_get, last_post),
        ("last delivery to exit (final flush, teardown)", last_post, end),
    ]

    def sync_in(a, b):
        chosen = [s for s in syncs if a <= s[0] < b or (b == end and s[0] == end)]
        return len(chosen), sum(s[1] for s in chosen)

    print(f"Traced pass: {total * 1000:.0f} ms wall under strace.")
    print()
    print("| phase | ms | share | fsync/fdatasync/sync_file_range calls | ms in them |")
    print("|---|---:|---:|---:|---:|")
    for name, a, b in phases:
        n, t = sync_in(a, b)
        print(f"| {name} | {(b - a) * 1000:.1f} | {(b - a) / total * 100:.0f} % | {n} | {t * 1000:.1f} |")
    # Per poll: from its request to the next request, by the answer's status.
    by_status = {}
    for this, following in zip(gets, gets[1:] + [None]):
        stop = following[1] if following else last_get
        by_status.setdefault(this[2], []).append(stop - this[1])
    print()
    for status, gaps in sorted(by_status.items(), key=lambda kv: str(kv[0])):
        print(f"- polls answered {status}: {len(gaps)}, {sum(gaps) * 1000:.1f} ms in all,"
              f" {sum(gaps) / len(gaps) * 1000:.2f} ms each (request to next request)")
    if posts:
        gaps = [b[1] - a[1] for a, b in zip(posts, posts[1:])]
        if gaps:
            print(f"- deliveries: {sum(gaps) / len(gaps) * 1000:.2f} ms each (request to next request)")
    print(f"- fsync-family calls in the whole pass: {len(syncs)}, {sum(s[1] for s in syncs) * 1000:.1f} ms"
          f" ({', '.join(f'{n} {k}' for k, n in sorted(count(syncs).items()))})")


LOG = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+(\w+)\s+([\w:]+): (.*)$")


def from_log(path, start, end):
    import datetime

    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = LOG.match(raw)
            if not m:
                continue
            at = datetime.datetime.fromisoformat(m.group(1)).replace(
                tzinfo=datetime.timezone.utc).timestamp()
            lines.append((at, m.group(3), m.group(4)))
    if not lines:
        sys.exit("no timestamped log line")
    first_log = lines[0][0]
    connects = [at for at, _, message in lines if "connecting to" in message]
    delivered = [at for at, target, message in lines
                 if target == "pollhook::deliver" and message.startswith("delivered")]
    # `once` logs this at debug when its last poll has ended; the
    # deliveries run from the first commit on, beside the later polls.
    done = [at for at, target, message in lines
            if target == "pollhook::cli" and message.startswith("every endpoint polled")]
    first_poll = connects[0] if connects else first_log
    polls_done = done[0] if done else lines[-1][0]
    last_delivery = max([polls_done] + delivered)
    during = sum(1 for at in delivered if at <= polls_done)
    writes = lambda a, b: sum(1 for at, t, m in lines if a <= at < b and t == "sled::pagecache::iobuf" and m.startswith("wrote"))
    phases = [
        ("exec to the first log line (process start-up, config parse; sled open begins)", start, first_log),
        ("store open (sled recovery) and HTTP client, to the first connect", first_log, first_poll),
        (f"polls: concurrent GETs, diffs, commits (group syncs, sled flushes) and {during} of the"
         f" {len(delivered)} deliveries beside them", first_poll, polls_done),
        (f"the other {len(delivered) - during} deliveries, after the last poll", polls_done, last_delivery),
        ("last delivery to exit (final flush, teardown)", last_delivery, end),
    ]
    total = end - start
    print(f"Pass with debug logging: {total * 1000:.0f} ms wall.")
    print()
    print("| phase | ms | share | sled log writes |")
    print("|---|---:|---:|---:|")
    for name, a, b in phases:
        print(f"| {name} | {(b - a) * 1000:.1f} | {(b - a) / total * 100:.0f} % | {writes(a, b)} |")


def count(syncs):
    out = {}
    for _, _, name in syncs:
        out[name] = out.get(name, 0) + 1
    return out


if __name__ == "__main__":
    main()
