//! Feeds, XML and HTML pages (samples under `tests/data/formats/`) served
//! by a real API on 127.0.0.1 and polled by the real daemon: the baseline
//! sends nothing, what only looks new (a feed's `lastBuildDate`, a page's
//! timestamp) sends nothing, a new entry or a changed value sends exactly
//! one event, and a body that cannot be read is a failed poll that keeps
//! the snapshot.

use pollhook::store::Store;
use serde_json::{Value, json};

use crate::cli::{check_refuses, data, run, text};
use crate::support::{Api, Daemon, Receiver, Reply, Webhook, simple_config};

fn sample(file: &str) -> String {
    let path = data(&format!("formats/{file}"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn reply(content_type: &'static str, body: &str) -> Reply {
    Reply {
        content_type,
        ..Reply::json(body)
    }
}

/// What one sample goes through: served as it is, then with only its
/// volatile parts changed, then with a real change, then as `malformed`.
struct Case<'a> {
    content_type: &'static str,
    /// The endpoint's keys besides `name`, `url` and `every`.
    keys: &'a str,
    original: String,
    volatile: String,
    changed: String,
    malformed: &'a [u8],
}

/// Runs `case` through the daemon and returns the one event the change
/// made, and the error of the failed polls of the malformed body.
async fn watch(case: Case<'_>) -> (Value, String) {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(reply(case.content_type, &case.original)).await;
    let receiver = Receiver::start().await;
    let keys = format!("fail_after = 2\nfail_for = \"0s\"\n{}", case.keys);
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, &keys));
    api.wait_for_requests(2).await;
    api.set(reply(case.content_type, &case.volatile));
    api.wait_for_requests(3).await;
    assert!(receiver.all().is_empty(), "{:#?}", bodies(&receiver.all()));

    api.set(reply(case.content_type, &case.changed));
    crate::support::eventually("the change is delivered", || {
        !receiver.accepted().is_empty()
    })
    .await;
    api.wait_for_requests(3).await;

    api.set(Reply {
        bodies: vec![String::from_utf8_lossy(case.malformed).into_owned()],
        ..reply(case.content_type, "")
    });
    crate::support::eventually("the failed polls are reported", || {
        receiver.accepted().len() >= 2
    })
    .await;
    daemon.stop().await;
    let hooks = bodies(&receiver.accepted());
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert_eq!(hooks[1]["type"], "endpoint.failing", "{hooks:#?}");

    // The garbage failed its polls: the snapshot is still the change's.
    let store = Store::open(state.path()).unwrap();
    let snapshot = store.snapshot("data").unwrap().unwrap();
    assert_eq!(Some(snapshot.version), hooks[0]["data"]["version"].as_u64());
    let error = hooks[1]["data"]["error"].as_str().unwrap().to_string();
    (hooks[0].clone(), error)
}

fn bodies(hooks: &[Webhook]) -> Vec<Value> {
    hooks.iter().map(Webhook::json).collect()
}

const ATOM_ENTRY: &str = r#"<entry>
    <id>tag:github.com,2008:Repository/724712/1.91.0</id>
    <updated>2025-10-30T15:23:11Z</updated>
    <link rel="alternate" type="text/html" href="https://github.com/rust-lang/rust/releases/tag/1.91.0"/>
    <title>Rust 1.91.0</title>
    <content type="html">&lt;h2&gt;Language&lt;/h2&gt;</content>
    <author><name>cuviper</name></author>
  </entry>
  <entry>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_github_release_in_the_atom_feed_is_one_item_added() {
    let original = sample("releases.atom");
    let (event, error) = watch(Case {
        content_type: "application/atom+xml; charset=utf-8",
        keys: "format = \"feed\"",
        volatile: original.replace("2025-10-30T15:23:11Z", "2025-11-04T09:00:00Z"),
        changed: original.replacen("<entry>", ATOM_ENTRY, 1),
        original,
        malformed: b"<feed><entry><id>x</id>",
    })
    .await;
    assert!(
        error.contains("the response is not a feed (RSS, Atom or JSON Feed): unable to parse XML"),
        "{error}"
    );
    assert_eq!(event["type"], "item.added");
    let item = &event["data"]["item"];
    assert_eq!(
        event["data"]["key"],
        "tag:github.com,2008:Repository/724712/1.91.0"
    );
    assert_eq!(item["title"], "Rust 1.91.0");
    assert_eq!(
        item["link"],
        "https://github.com/rust-lang/rust/releases/tag/1.91.0"
    );
    assert_eq!(item["updated"], "2025-10-30T15:23:11+00:00");
    assert_eq!(item["authors"], json!(["cuviper"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wordpress_post_is_found_by_the_content_type_and_last_build_date_changes_nothing() {
    let original = sample("wordpress.rss");
    let post = r#"<item>
		<title>First frost</title>
		<link>https://blog.example.org/2025/11/first-frost/</link>
		<dc:creator><![CDATA[Ann]]></dc:creator>
		<pubDate>Tue, 04 Nov 2025 07:00:00 +0000</pubDate>
		<category><![CDATA[Weather]]></category>
		<guid isPermaLink="false">https://blog.example.org/?p=420</guid>
		<description><![CDATA[It came early this year]]></description>
	</item>
	<item>"#;
    let (event, error) = watch(Case {
        content_type: "application/rss+xml; charset=UTF-8",
        // No `format`: the Content-Type says it is a feed, whose items are
        // news: an edited post (as a new `lastBuildDate`) sends nothing.
        keys: "",
        volatile: original
            .replace(
                "Mon, 03 Nov 2025 08:15:02 +0000",
                "Tue, 04 Nov 2025 10:00:00 +0000",
            )
            .replace("for three days", "for four days"),
        changed: original.replacen("<item>", post, 1),
        original,
        malformed: b"<rss version=\"2.0\"><channel><item><title>cut</ti",
    })
    .await;
    assert!(error.contains("the response is not a feed"), "{error}");
    assert_eq!(event["type"], "item.added");
    let item = &event["data"]["item"];
    assert_eq!(event["data"]["key"], "https://blog.example.org/?p=420");
    assert_eq!(item["title"], "First frost");
    assert_eq!(
        item["link"],
        "https://blog.example.org/2025/11/first-frost/"
    );
    assert_eq!(item["published"], "2025-11-04T07:00:00+00:00");
    assert_eq!(item["categories"], json!(["Weather"]));
    assert_eq!(item["summary"], "It came early this year");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_podcast_episode_comes_with_its_enclosure() {
    let original = sample("podcast.rss");
    let episode = r#"<item>
      <title>Episode 43: More answers</title>
      <guid isPermaLink="false">example-show-43</guid>
      <pubDate>Mon, 10 Nov 2025 05:00:00 GMT</pubDate>
      <enclosure url="https://cdn.example.net/show/43.mp3" length="50000000" type="audio/mpeg"/>
    </item>
    <item>"#;
    let (event, error) = watch(Case {
        content_type: "application/xml",
        keys: "format = \"feed\"",
        volatile: original.replace(
            "Tue, 04 Nov 2025 06:00:00 GMT",
            "Wed, 05 Nov 2025 06:00:00 GMT",
        ),
        changed: original.replacen("<item>", episode, 1),
        original,
        malformed: b"\x00\x01\x02 not a feed",
    })
    .await;
    assert!(error.contains("the response is not a feed"), "{error}");
    assert_eq!(event["type"], "item.added");
    let item = &event["data"]["item"];
    assert_eq!(item["id"], "example-show-43");
    assert_eq!(item["title"], "Episode 43: More answers");
    assert_eq!(
        item["enclosures"],
        json!([{"url": "https://cdn.example.net/show/43.mp3", "type": "audio/mpeg", "length": 50000000}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_feed_item_is_one_item_added() {
    let original = sample("feed.json");
    let entry = r#""items": [
    {
      "id": "https://micro.example.com/2025/11/05/rain",
      "url": "https://micro.example.com/2025/11/05/rain",
      "title": "Rain",
      "content_text": "All day.",
      "date_published": "2025-11-05T08:00:00+01:00"
    },"#;
    let (event, error) = watch(Case {
        content_type: "application/feed+json",
        keys: "",
        volatile: original.replace("\"Example Microblog\"", "\"Example Microblog (new name)\""),
        changed: original.replacen("\"items\": [", entry, 1),
        original,
        malformed: b"{\"version\": \"https://jsonfeed.org/version/1.1\", \"items\": [",
    })
    .await;
    assert!(
        error.contains("the response is not a feed (RSS, Atom or JSON Feed): unable to parse JSON"),
        "{error}"
    );
    assert_eq!(event["type"], "item.added");
    let item = &event["data"]["item"];
    assert_eq!(item["id"], "https://micro.example.com/2025/11/05/rain");
    assert_eq!(item["link"], "https://micro.example.com/2025/11/05/rain");
    assert_eq!(item["summary"], "All day.");
    assert_eq!(item["published"], "2025-11-05T07:00:00+00:00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rss_1_0_item_is_one_item_added() {
    let original = sample("rss1.rdf");
    let article = r#"<item rdf:about="https://news.example.jp/articles/1003">
    <title>Festival moved indoors</title>
    <link>https://news.example.jp/articles/1003</link>
    <dc:date>2025-11-04T10:00:00+09:00</dc:date>
  </item>
  <item rdf:about="https://news.example.jp/articles/1002">"#;
    let (event, error) = watch(Case {
        content_type: "application/rdf+xml",
        keys: "format = \"feed\"",
        volatile: original.replace(
            "<dc:date>2025-11-04T09:00:00+09:00</dc:date>",
            "<dc:date>2025-11-04T10:05:00+09:00</dc:date>",
        ),
        changed: original.replacen(
            r#"<item rdf:about="https://news.example.jp/articles/1002">"#,
            article,
            1,
        ),
        original,
        malformed: b"<rdf:RDF><item></rdf:RDF>",
    })
    .await;
    assert!(error.contains("the response is not a feed"), "{error}");
    assert_eq!(event["type"], "item.added");
    assert_eq!(event["data"]["item"]["title"], "Festival moved indoors");
    assert_eq!(
        event["data"]["item"]["link"],
        "https://news.example.jp/articles/1003"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecb_rate_that_moves_is_one_change_of_that_value() {
    let original = sample("eurofxref-daily.xml");
    let (event, error) = watch(Case {
        content_type: "text/xml",
        keys: r#"format = "xml"
select = '.["gesmes:Envelope"].Cube.Cube | {time: .["@time"], rates: (.Cube | map({(.["@currency"]): .["@rate"]}) | add)}'
ignore = ["/time"]"#,
        volatile: original.replace("2025-11-03", "2025-11-04"),
        changed: original.replace("rate='1.1525'", "rate='1.1601'"),
        original,
        malformed: b"<gesmes:Envelope><Cube></gesmes:Envelope>",
    })
    .await;
    assert!(
        error.contains("the response is not well-formed XML"),
        "{error}"
    );
    assert_eq!(event["type"], "endpoint.changed");
    assert_eq!(
        event["data"]["patch"],
        json!([{"op": "replace", "path": "/rates/USD", "value": "1.1601"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_on_a_product_page_is_one_change_and_its_timestamps_none() {
    let original = sample("product.html");
    let (event, error) = watch(Case {
        content_type: "text/html; charset=utf-8",
        keys: r##"format = "html"
css = { price = "span.price", stock = "#stock" }
replace = [['^€\s*', '']]"##,
        volatile: original
            .replace("2025-11-04T10:12:44Z", "2025-11-04T10:13:50Z")
            .replace("2025-11-04 10:12:44", "2025-11-04 10:13:50")
            .replace("3 people", "5 people"),
        changed: original.replace("129,95", "99,95"),
        original,
        malformed: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    })
    .await;
    assert!(
        error.contains("the response is not an HTML page: it holds binary data"),
        "{error}"
    );
    assert_eq!(event["type"], "endpoint.changed");
    assert_eq!(
        event["data"]["patch"],
        json!([{"op": "replace", "path": "/price", "value": "99,95"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_in_an_html_changelog_is_one_item_added() {
    let original = sample("changelog.html");
    let release = r#"<li class="release">
      <h2>2.5.0</h2>
      <time datetime="2025-11-04">4 November 2025</time>
      <a href="/changelog/2.5.0">Release notes</a>
    </li>
    <li class="release">"#;
    let (event, error) = watch(Case {
        content_type: "text/html",
        keys: r#"format = "html"
items_css = "li.release"
css = { version = "h2", date = { css = "time", attr = "datetime" }, link = { css = "a", attr = "href" } }
key = ".version""#,
        volatile: original.replace("commit 1a2b3c4", "commit 5d6e7f8"),
        changed: original.replacen(r#"<li class="release">"#, release, 1),
        original,
        malformed: b"\x00\x00\x00\x00",
    })
    .await;
    assert!(
        error.contains("the response is not an HTML page"),
        "{error}"
    );
    assert_eq!(event["type"], "item.added");
    assert_eq!(event["data"]["key"], "2.5.0");
    assert_eq!(
        event["data"]["item"],
        json!({"version": "2.5.0", "date": "2025-11-04", "link": "/changelog/2.5.0"})
    );
}

/// `once` says why a body could not be read, and names a selector that
/// matched nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_names_what_could_not_be_read_and_what_matched_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = Api::start(reply("application/octet-stream", "\u{0}\u{1}garbage")).await;
    let page = Api::start(reply("text/html", &sample("product.html"))).await;
    let endpoint = |name: &str, api: &Api, keys: &str| {
        format!(
            "[[endpoint]]\nname = \"{name}\"\nurl = \"{}\"\nevery = \"1m\"\n{keys}\n",
            api.url()
        )
    };
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}{}{}{}",
            dir.path().join("state").display(),
            endpoint("feed", &garbage, "format = \"feed\""),
            endpoint("xml", &garbage, "format = \"xml\""),
            endpoint("html", &garbage, "format = \"html\"\ncss = \"p\""),
            endpoint(
                "gone",
                &page,
                "format = \"html\"\ncss = { price = \"span.sale-price\" }"
            ),
        ),
    )
    .unwrap();
    let output = run(&["once", "-c", config.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    for expected in [
        "feed: poll failed: the response is not a feed (RSS, Atom or JSON Feed)",
        "xml: poll failed: the response is not well-formed XML",
        "html: poll failed: the response is not an HTML page: it holds binary data",
        "gone: warning: CSS selector(s) `span.sale-price` matched nothing on the page",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}

/// A selector that matches nothing is logged when it first does, not at
/// every poll, and is no change: the daemon polls on and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing_is_logged_once_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let page = Api::start(reply("text/html", &sample("product.html"))).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[target]]\nname = \"hook\"\nurl = \"{}\"\n\
             [[endpoint]]\nname = \"gone\"\nurl = \"{}\"\nevery = \"100ms\"\n\
             format = \"html\"\ncss = {{ price = \"span.sale-price\" }}\n",
            dir.path().join("state").display(),
            receiver.url(),
            page.url(),
        ),
    )
    .unwrap();
    let mut daemon = crate::support::run_binary(&config, &[]);
    page.wait_for_requests(6).await;
    daemon.kill().await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    let warned = log.matches("`span.sale-price` matched nothing").count();
    assert_eq!(warned, 1, "{log}");
    assert!(receiver.all().is_empty(), "{:?}", receiver.all());
}

/// Every mistake in the new keys, at once, each at its line and column.
#[tokio::test]
async fn check_names_every_mistake_in_the_format_keys_at_its_place() {
    let path = data("bad-formats.toml");
    let file = path.display().to_string();
    let stderr = check_refuses(
        &path,
        [
            "7:7: endpoint `css-without-html`: `css` is for HTML pages: set `format = \"html\"` too",
            "8:8: endpoint `css-without-html`: `attr` is for HTML pages",
            "15:17: endpoint `bad-selector`: invalid CSS selector `span[`",
            "15:61: endpoint `bad-selector`: unknown field `colour`, expected `css` or `attr`",
            "23:13: endpoint `items-without-fields`: `items_css` needs a table of field selectors in `css`",
            "29:10: endpoint `html-without-css`: `format = \"html\"` needs `css`",
            "36:9: endpoint `feed-as-text`: `match` works on text, but `format = \"feed\"`",
            "42:10: endpoint `bad-format`: unknown variant `yaml`, expected one of `json`, `text`, `feed`, `xml`, `html`",
        ]
        .map(|expected| format!("{file}:{expected}")),
    )
    .await;
    assert_eq!(stderr.lines().count(), 8, "{stderr}");
}

/// The TOML of the recipe under `heading` in docs/recipes.md, its target
/// sent to `receiver`, its endpoint polling `api` every 100 ms, and each
/// `${...}` a test value.
fn recipe(heading: &str, api: &Api, receiver: &Receiver) -> String {
    let recipes = std::fs::read_to_string(data("../../docs/recipes.md")).unwrap();
    let section = recipes
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no recipe {heading:?}"));
    let toml = section
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let (target, endpoint) = toml.split_once("[[endpoint]]").unwrap();
    let url = regex::Regex::new(r#"(?m)^url = ".*"$"#).unwrap();
    let target = url.replace(target, format!("url = \"{}\"", receiver.url()));
    let endpoint = url.replace(endpoint, format!("url = \"{}\"", api.url()));
    let endpoint = regex::Regex::new(r#"(?m)^every = ".*"$"#)
        .unwrap()
        .replace(&endpoint, "every = \"100ms\"");
    let secrets = regex::Regex::new(r"\$\{[^}]+\}").unwrap();
    secrets
        .replace_all(&format!("{target}[[endpoint]]{endpoint}"), "test")
        .into_owned()
}

/// Each feed, page and XML recipe, through the daemon to a stand-in for its
/// service: the change arrives as that service reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_page_and_xml_recipes_deliver_what_they_promise() {
    let cases = [
        (
            "A new GitHub release from the Atom feed to Discord",
            "application/atom+xml",
            sample("releases.atom"),
            sample("releases.atom").replacen("<entry>", ATOM_ENTRY, 1),
        ),
        (
            "A price on a web page to ntfy",
            "text/html",
            sample("product.html"),
            sample("product.html").replace("129,95", "99,95"),
        ),
        (
            "An XML API value to Home Assistant",
            "application/xml",
            sample("eurofxref-daily.xml"),
            sample("eurofxref-daily.xml").replace("rate='1.1525'", "rate='1.1601'"),
        ),
    ];
    let mut bodies = Vec::new();
    for (heading, content_type, before, after) in cases {
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(reply(content_type, &before)).await;
        let receiver = Receiver::start().await;
        let config = crate::support::config(state.path(), &recipe(heading, &api, &receiver));
        let daemon = Daemon::start(config);
        api.wait_for_requests(2).await;
        api.set(reply(content_type, &after));
        crate::support::eventually(heading, || !receiver.accepted().is_empty()).await;
        api.wait_for_requests(2).await;
        daemon.stop().await;
        let hooks = receiver.accepted();
        assert_eq!(hooks.len(), 1, "{heading}: {:#?}", self::bodies(&hooks));
        bodies.push(String::from_utf8_lossy(&hooks[0].body).into_owned());
    }
    let discord: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(
        discord["content"],
        "rust-releases: added Rust 1.91.0 — https://github.com/rust-lang/rust/releases/tag/1.91.0"
    );
    assert_eq!(bodies[1], "trail-runner: /price 129,95 → 99,95");
    let home_assistant: Value = serde_json::from_str(&bodies[2]).unwrap();
    assert_eq!(
        home_assistant["data"]["patch"],
        json!([{"op": "replace", "path": "/usd", "value": "1.1601"}])
    );
}

/// A feed that was compared as text (before feeds were read by their
/// Content-Type) starts afresh from its items: no diff between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_once_compared_as_text_rebaselines_quietly() {
    let state = tempfile::tempdir().unwrap();
    let atom = sample("releases.atom");
    let api = Api::start(reply("text/plain", &atom)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    api.set(reply("application/atom+xml", &atom));
    api.wait_for_requests(3).await;
    api.set(reply(
        "application/atom+xml",
        &atom.replacen("<entry>", ATOM_ENTRY, 1),
    ));
    crate::support::eventually("the new release is delivered", || {
        !receiver.accepted().is_empty()
    })
    .await;
    api.wait_for_requests(2).await;
    daemon.stop().await;
    let hooks = bodies(&receiver.accepted());
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    assert_eq!(hooks[0]["type"], "item.added");
    assert_eq!(hooks[0]["data"]["item"]["title"], "Rust 1.91.0");
}
