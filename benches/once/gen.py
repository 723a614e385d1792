#!/usr/bin/env python3
"""Data, configs and the report for benches/once/run.sh (Python 3 stdlib only).

Subcommands:
  generate DIR              the JSON files DIR/products/pNNNN.json
  change DIR TAG ROUND      a price change in COUNT of them (10 % by default)
  pollhook-config ...       a pollhook config with one endpoint per file
  urlwatch-config ...       urlwatch's urls.yaml and config.yaml
  report FILE               the markdown table from the results TSV

Everything is deterministic from --seed: the same seed gives the same files
and the same changes, byte for byte (except the files' mtimes).
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

ADJECTIVES = [
    "Walnut", "Oak", "Brushed steel", "Matte black", "Linen", "Ceramic",
    "Bamboo", "Copper", "Frosted glass", "Recycled", "Compact", "Foldable",
    "Wireless", "Ergonomic", "Vintage", "Stackable", "Waterproof", "Smart",
]
NOUNS = [
    "desk lamp", "office chair", "bookshelf", "coffee grinder", "kettle",
    "monitor arm", "standing desk", "backpack", "water bottle", "headphones",
    "keyboard", "mouse pad", "plant pot", "wall clock", "cutting board",
    "french press", "bike light", "phone stand", "laptop sleeve", "notebook",
]
WORDS = [
    "sturdy", "light", "durable", "handmade", "quiet", "easy", "to", "clean",
    "fits", "most", "desks", "with", "a", "two-year", "warranty", "and",
    "soft-touch", "finish", "ships", "in", "plastic-free", "packaging",
]
CATEGORIES = ["home", "office", "kitchen", "outdoor", "audio", "storage"]
TARGET_SIZE = 1536  # bytes per file, roughly: "~1.5 KiB"
# The files' first mtime, well in the past, so that every change moves it.
EPOCH = 1_700_000_000


def path_of(root, index):
    return os.path.join(root, "products", f"p{index:04d}.json")


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def item(rng, page, n):
    return {
        "id": 100000 + page * 100 + n,
        "sku": f"SKU-{rng.randrange(16**6):06X}",
        "name": f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
        "category": rng.choice(CATEGORIES),
        "price_cents": rng.randrange(499, 49999),
        "currency": "EUR",
        "stock": rng.randrange(0, 250),
        "rating": round(rng.uniform(2.5, 5.0), 1),
        "updated_at": iso(EPOCH - rng.randrange(86400 * 30)),
    }


def document(seed, page):
    rng = random.Random(f"{seed}:page:{page}")
    doc = {
        "store": "pollhook-bench",
        "page": page,
        "generated_at": iso(EPOCH),
        "items": [],
    }
    for n in range(5):
        doc["items"].append(item(rng, page, n))
    # Descriptions of a few words each, to bring the file to ~1.5 KiB.
    for product in doc["items"]:
        product["description"] = ""
    size = len(json.dumps(doc, indent=1))
    goal = TARGET_SIZE - rng.randrange(60)
    while size < goal:
        product = rng.choice(doc["items"])
        word = rng.choice(WORDS)
        size += len(word) + (1 if product["description"] else 0)
        product["description"] = f"{product['description']} {word}".strip()
    return doc


def write(path, doc, min_mtime):
    """Writes `doc` and gives it an mtime (whole seconds, as nginx's
    Last-Modified and ETag have them) later than the one it had, so that the
    server's validators change with every change even within one second."""
    try:
        old = int(os.stat(path).st_mtime)
    except FileNotFoundError:
        old = 0
    text = json.dumps(doc, indent=1) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    mtime = max(min_mtime, old + 1)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def cmd_generate(args):
    os.makedirs(os.path.join(args.dir, "products"), exist_ok=True)
    total = 0
    for page in range(1, args.files + 1):
        doc = document(args.seed, page)
        write(path_of(args.dir, page), doc, EPOCH)
        total += os.path.getsize(path_of(args.dir, page))
    print(f"{args.files} files, {total / args.files:.0f} bytes on average")


def cmd_change(args):
    """Changes the price of one item in `count` files chosen by
    (seed, tag, round); prints the changed paths' numbers."""
    rng = random.Random(f"{args.seed}:change:{args.tag}:{args.round}")
    pages = sorted(rng.sample(range(1, args.files + 1), args.count))
    now = int(time.time())
    for page in pages:
        path = path_of(args.dir, page)
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        product = rng.choice(doc["items"])
        old = product["price_cents"]
        new = old
        while new == old:
            new = max(99, round(old * rng.uniform(0.8, 1.2)))
        product["price_cents"] = new
        product["updated_at"] = iso(now)
        write(path, doc, now)
    print(" ".join(str(p) for p in pages))


def cmd_pollhook_config(args):
    base = f"http://127.0.0.1:{args.port}"
    prefix = args.prefix.rstrip("/")
    lines = [
        "# Written by benches/once/gen.py: one endpoint per file served by",
        "# the benchmark's nginx, one target (its /hook, which answers 204).",
        f'state_dir = "{args.state_dir}"',
        f"max_concurrent_polls = {args.max_concurrent_polls}",
        f"per_host = {args.per_host}",
        "",
        "[admin]",
        'listen = "127.0.0.1:0"',
        "",
        "[[target]]",
        'name = "hook"',
        f'url = "{base}/hook"',
        "",
    ]
    for page in range(1, args.files + 1):
        lines += [
            "[[endpoint]]",
            f'name = "p{page:04d}"',
            f'url = "{base}{prefix}/products/p{page:04d}.json"',
            'every = "1h"',
            "",
        ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def cmd_urlwatch_config(args):
    base = f"http://127.0.0.1:{args.port}"
    prefix = args.prefix.rstrip("/")
    jobs = [
        f"name: p{page:04d}\nurl: {base}{prefix}/products/p{page:04d}.json\n"
        for page in range(1, args.files + 1)
    ]
    with open(args.urls, "w", encoding="utf-8") as f:
        f.write("---\n".join(jobs))
    # Merged by urlwatch with its defaults, in which every reporter but
    # stdout is disabled already. JSON is YAML.
    config = {
        "display": {"new": True, "error": True, "unchanged": False, "empty-diff": True},
        "report": {
            "stdout": {"enabled": True, "color": False},
            "email": {"enabled": False},
            "html": {"separate": False},
        },
    }
    with open(args.config, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
        f.write("\n")


def median(values):
    return statistics.median(values) if values else float("nan")


def read_tsv(path):
    """Rows of `tool run wall_s rss_kb user_s sys_s events responses`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            tool, run, wall, rss, user, sys_, events, responses = line.rstrip("\n").split("\t")
            rows.append({
                "tool": tool, "run": int(run), "wall": float(wall),
                "rss": int(rss or 0), "user": float(user), "sys": float(sys_),
                "events": events, "responses": responses,
            })
    return rows


NAMES = {
    "urlwatch-changed": "urlwatch 2.29 (10 threads)",
    "pollhook-changed": "pollhook `once --send`",
    "wrk": "wrk, the same 1,000 GETs, keep-alive, 10 conns",
    "pollhook-first": "pollhook, first pass (empty state)",
    "urlwatch-first": "urlwatch, first pass (empty cache)",
    "pollhook-unchanged": "pollhook, a pass with nothing changed",
    "urlwatch-unchanged": "urlwatch, a pass with nothing changed",
}


def summarise(texts):
    """"200:984 304:16" and "200:1000 304:0" -> "200:984..1000 304:0..16"."""
    values = {}
    for text in texts:
        for token in text.split():
            key, sep, value = token.partition(":")
            if not sep or not value.isdigit():
                return ", ".join(sorted(set(texts)))
            values.setdefault(key, []).append(int(value))
    out = []
    for key, vals in values.items():
        low, high = min(vals), max(vals)
        out.append(f"{key}:{low}" if low == high else f"{key}:{low}..{high}")
    return " ".join(out)


def table(by_tool, tools):
    out = [
        "| | wall (median) | min..max | peak RSS (median) | CPU user+sys | changes seen/expected | nginx answered | runs |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    medians = {}
    for tool in tools:
        rows = by_tool.get(tool, [])
        if not rows:
            continue
        walls = [r["wall"] for r in rows]
        rss = [r["rss"] for r in rows if r["rss"] > 0]
        cpu = [r["user"] + r["sys"] for r in rows if r["user"] >= 0]
        medians[tool] = median(walls)
        rss_text = f"{median(rss) / 1000:.1f} MB" if rss else ""
        cpu_text = f"{median(cpu):.2f} s" if cpu else ""
        events = ", ".join(sorted({r["events"] for r in rows}))
        responses = summarise([r["responses"] for r in rows])
        out.append(
            f"| {NAMES.get(tool, tool)} | {medians[tool]:.3f} s"
            f" | {min(walls):.3f}..{max(walls):.3f} s | {rss_text} | {cpu_text}"
            f" | {events} | {responses} | {len(rows)} |"
        )
    return out, medians


def cmd_report(args):
    by_tool = {}
    for row in read_tsv(args.file):
        by_tool.setdefault(row["tool"], []).append(row)
    out, med = table(by_tool, ["urlwatch-changed", "pollhook-changed", "wrk"])
    out.append("")
    ph, uw, wrk = (med.get(k) for k in ("pollhook-changed", "urlwatch-changed", "wrk"))
    if ph and uw:
        out.append(f"- urlwatch / pollhook (wall): **{uw / ph:.1f}x**")
    if ph and wrk:
        out.append(f"- pollhook / wrk (wall): **{ph / wrk:.1f}x**")
    others = ["pollhook-first", "urlwatch-first", "pollhook-unchanged", "urlwatch-unchanged"]
    if any(k in by_tool for k in others):
        extra, _ = table(by_tool, others)
        out += ["", "Other passes (one run each):", ""] + extra
    out += [
        "",
        "\"changes seen\": for pollhook the webhooks nginx received (204s on /hook),"
        " for urlwatch the CHANGED entries in its report."
        " RSS in MB of 1,000,000 bytes (time -v's kbytes / 1000). \"nginx answered\":"
        " the GETs' statuses during the pass (from nginx's access log);"
        " \"printed\": event lines on pollhook's stdout.",
    ]
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", default="42")
    parser.add_argument("--files", type=int, default=1000)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate")
    p.add_argument("dir")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("change")
    p.add_argument("dir")
    p.add_argument("tag")
    p.add_argument("round", type=int)
    p.add_argument("--count", type=int, default=None)
    p.set_defaults(func=cmd_change)

    p = sub.add_parser("pollhook-config")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--per-host", type=int, default=10)
    p.add_argument("--max-concurrent-polls", type=int, default=64)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pollhook_config)

    p = sub.add_parser("urlwatch-config")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--urls", required=True)
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_urlwatch_config)

    p = sub.add_parser("report")
    p.add_argument("file")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args()
    if args.command == "change" and args.count is None:
        args.count = args.files // 10
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
