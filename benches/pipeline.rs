//! Micro-benchmarks of the steps one poll and one delivery take:
//! extract + diff for JSON documents of 1 KiB, 100 KiB and 10 MiB, signing,
//! an outbox row's trip through sled (commit, read, complete), and what a
//! dispatcher reads to find its due rows behind a backlog of retries, and
//! the conversion of a feed, an XML document and an HTML page (`formats`).
//!
//! `cargo bench --bench pipeline` runs them all; a filter narrows them down,
//! e.g. `cargo bench --bench pipeline -- 10MiB`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pollhook::config::{Format, WebhookSecret};
use pollhook::diff::diff;
use pollhook::extract::{Document, Rules, extract};
use pollhook::store::{Commit, Fate, OutboxRow, Snapshot, Store};

fn json_rules() -> Rules {
    Rules {
        format: Some(Format::Json),
        ..Rules::default()
    }
}

/// A JSON document of about `bytes` bytes: `{"items": [...]}` of ~100-byte
/// items. Every `changed_every`-th item (none when 0) has another price.
fn document(bytes: usize, changed_every: usize) -> Vec<u8> {
    let count = (bytes / 100).max(1);
    let mut text = String::with_capacity(bytes + 256);
    text.push_str(r#"{"generated":"2026-11-23T10:00:00Z","items":["#);
    for index in 0..count {
        if index > 0 {
            text.push(',');
        }
        let changed = changed_every > 0 && index % changed_every == changed_every / 2;
        let price = if changed {
            1_000_000 + index
        } else {
            index * 7
        };
        text.push_str(&format!(
            r#"{{"id":{index},"name":"item {index}","price":{price},"stock":{},"tags":["a","b"],"ok":true}}"#,
            index % 13
        ));
    }
    text.push_str("]}");
    text.into_bytes()
}

/// What a poll does after the fetch: extract the body, compare hashes, and
/// only when they differ, load the previous document and diff.
fn extract_and_diff(body: &[u8], previous: &Document) -> Option<pollhook::diff::Change> {
    let current = extract(body, Some("application/json"), &json_rules()).expect("valid JSON");
    if current.hash == previous.hash {
        return None;
    }
    // The previous document comes from the store as canonical bytes, with
    // the hash its file header records.
    let previous = Document::with_hash(previous.kind, previous.hash, previous.canonical.clone());
    diff(Some(&previous), &current)
}

fn extract_diff(criterion: &mut Criterion) {
    for (label, bytes) in [
        ("1KiB", 1 << 10),
        ("100KiB", 100 << 10),
        ("10MiB", 10 << 20),
    ] {
        let mut group = criterion.benchmark_group(format!("extract_diff/{label}"));
        if bytes >= 1 << 20 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(5))
                .warm_up_time(Duration::from_secs(1));
        } else {
            group
                .measurement_time(Duration::from_secs(2))
                .warm_up_time(Duration::from_millis(500));
        }
        let base = document(bytes, 0);
        let previous = extract(&base, Some("application/json"), &json_rules()).expect("valid JSON");
        let items = (bytes / 100).max(1);
        let cases = [
            ("unchanged", base.clone()),
            // The middle item only.
            ("one_field", document(bytes, items)),
            ("ten_percent", document(bytes, 10)),
        ];
        for (case, body) in cases {
            group.bench_function(case, |bencher| {
                bencher.iter(|| extract_and_diff(black_box(&body), &previous))
            });
        }
        group.finish();
    }
}

fn signing(criterion: &mut Criterion) {
    let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        .parse()
        .expect("valid secret");
    let body = vec![b'x'; 2048];
    criterion.bench_function("sign/2KiB", |bencher| {
        bencher.iter(|| {
            pollhook::deliver::sign::sign(
                &secret,
                black_box("msg_0195f1a2b3c4d5e6f708192a3b4c5d6e"),
                1_763_892_000,
                black_box(&body),
            )
        })
    });
}

fn outbox(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Store::open(dir.path()).expect("a store");
    let document =
        extract(&document(1536, 0), Some("application/json"), &json_rules()).expect("JSON");
    let body = String::from_utf8(vec![b'x'; 1024]).expect("ASCII");
    let row = |event: u64, next_attempt_ms: u64| OutboxRow {
        event_id: format!("msg_{event}"),
        event_type: "endpoint.changed".into(),
        endpoint: "bench".into(),
        body: body.clone(),
        next_attempt_ms,
        ..OutboxRow::default()
    };
    let mut version = 0;
    let mut group = criterion.benchmark_group("outbox");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    // One change: snapshot + history + one row committed and flushed, then
    // read back and completed as the dispatcher does after a 2xx.
    group.bench_function("commit_read_complete", |bencher| {
        bencher.iter_batched(
            || {
                version += 1;
                version
            },
            |version| {
                let snapshot = Snapshot {
                    version,
                    hash: document.hash,
                    definition: [0; 32],
                    etag: None,
                    last_modified: None,
                    changed_at_ms: 0,
                    notified: version,
                };
                runtime.block_on(async {
                    store
                        .commit(&Commit {
                            endpoint: "bench",
                            snapshot: &snapshot,
                            document: &document,
                            keep_history: 10,
                            deliveries: vec![("sink", row(version, 0))],
                            seen: None,
                        })
                        .await
                        .expect("commit")
                });
                let (due, _) = store.due_rows("sink", 0, 1, |_| false).expect("rows");
                for (key, row) in due {
                    store
                        .settle(&key, row.next_attempt_ms, Fate::Delivered, None)
                        .expect("complete");
                }
            },
            BatchSize::SmallInput,
        )
    });

    // A target back after an outage: 10,000 rows wait for their retry, 16
    // are due. The dispatcher reads the due ones (`due_rows`); reading the
    // whole queue (`outbox_rows`) is what it did before the `due` index.
    let backlog = tempfile::tempdir().expect("a temp dir");
    let backlog = Store::open(backlog.path()).expect("a store");
    let deliveries: Vec<_> = (0..10_000)
        .map(|event| ("sink", row(event, u64::MAX)))
        .chain((0..16).map(|event| ("sink", row(event, 0))))
        .collect();
    runtime
        .block_on(backlog.commit_health("bench", None, &deliveries))
        .expect("rows");
    group.bench_function("due_rows_behind_10000_retries", |bencher| {
        bencher.iter(|| backlog.due_rows("sink", 1, 16, |_| false).expect("rows"))
    });
    group.bench_function("outbox_rows_10000_retries", |bencher| {
        bencher.iter(|| backlog.outbox_rows("sink").expect("rows"))
    });
    group.finish();
}

/// Extracting a 500-entry Atom feed (128 KiB), an XML document of 20,000
/// elements (760 KiB) and a page of 5,000 blocks (470 KiB) picked by an `items_css` rule (`cargo bench --bench pipeline -- formats`).
fn formats(criterion: &mut Criterion) {
    let entries: String = (0..500)
        .map(|n| {
            format!(
                "<entry><id>tag:example.com,2008:{n}</id><updated>2025-11-04T10:00:00Z</updated>\
                 <link rel=\"alternate\" href=\"https://example.com/r/{n}\"/><title>Release {n}</title>\
                 <content type=\"html\">&lt;p&gt;Notes for {n}&lt;/p&gt;</content><author><name>a</name></author></entry>"
            )
        })
        .collect();
    let atom = format!(
        "<?xml version=\"1.0\"?><feed xmlns=\"http://www.w3.org/2005/Atom\"><id>x</id><title>t</title>{entries}</feed>"
    );
    let rates: String = (0..20_000)
        .map(|n| format!("<Cube currency='C{n}' rate='{}.{n}'/>", n % 7))
        .collect();
    let xml = format!("<Envelope><Cube><Cube time='2025-11-04'>{rates}</Cube></Cube></Envelope>");
    let blocks: String = (0..5_000)
        .map(|n| format!("<li class=\"release\"><h2>1.{n}</h2><a href=\"/c/1.{n}\">notes</a><p>Some text about {n}.</p></li>"))
        .collect();
    let page = format!("<html><body><ul>{blocks}</ul></body></html>");
    let rules = |text: &str| -> Rules {
        let path = std::path::Path::new("bench.toml");
        let config = pollhook::config::Config::compile(
            &format!("state_dir = \"/tmp/bench\"\n[[endpoint]]\nname = \"b\"\nurl = \"http://127.0.0.1/\"\nevery = \"1m\"\n{text}"),
            path,
        )
        .unwrap();
        config.endpoints[0].rules().clone()
    };
    let cases = [
        ("feed_atom_500_entries", atom, rules("format = \"feed\"")),
        ("xml_20000_elements", xml, rules("format = \"xml\"")),
        (
            "html_items_5000_blocks",
            page,
            rules(
                "format = \"html\"\nitems_css = \"li.release\"\ncss = { version = \"h2\", link = { css = \"a\", attr = \"href\" } }\nkey = \".version\"",
            ),
        ),
    ];
    let mut group = criterion.benchmark_group("formats");
    group.sample_size(10);
    for (name, body, rules) in cases {
        println!("{name}: {} KiB", body.len() / 1024);
        group.bench_function(name, |bencher| {
            bencher.iter(|| black_box(extract(body.as_bytes(), None, &rules).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, extract_diff, signing, outbox, formats);
criterion_main!(benches);
