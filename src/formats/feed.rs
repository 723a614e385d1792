//! Feeds (RSS 0.9x, 1.0 and 2.0, Atom, JSON Feed, read by feed-rs) → the
//! array of their items, each normalised to
//! `{id, title, link, published, updated, summary, authors, categories,
//! enclosures}` whatever the feed's dialect. The feed's own fields
//! (`lastBuildDate`, `updated`, a generator) are left out: they change at
//! every rebuild and say nothing about the items.

use feed_rs::model::{Entry, Link, Text};
use serde_json::{Value, json};

use super::FormatError;

/// Converts a feed to the array of its items.
pub fn to_json(body: &[u8]) -> Result<Value, FormatError> {
    super::xml::check_depth(body)?;
    // An item without a guid or id is known by its link (or its title):
    // feed-rs would otherwise make a random id, a new item at every poll.
    let parser = feed_rs::parser::Builder::new()
        .id_generator(|links, title, _| match links.first() {
            Some(link) => link.href.clone(),
            None => title
                .as_ref()
                .map(|title| title.content.clone())
                .unwrap_or_default(),
        })
        .build();
    let feed = parser
        .parse(body)
        .map_err(|error| FormatError::Feed(error.to_string()))?;
    Ok(Value::Array(feed.entries.iter().map(item).collect()))
}

fn item(entry: &Entry) -> Value {
    let link = entry
        .links
        .iter()
        .find(|link| matches!(link.rel.as_deref(), None | Some("alternate")))
        .or(entry.links.first())
        .map(|link| link.href.clone());
    let text = |text: &Option<Text>| text.as_ref().map(|text| text.content.trim().to_string());
    let summary = text(&entry.summary).or_else(|| {
        entry
            .content
            .as_ref()
            .and_then(|content| content.body.as_ref().map(|body| body.trim().to_string()))
    });
    let authors: Vec<&str> = entry
        .authors
        .iter()
        .filter_map(|person| person.name.as_deref().or(person.email.as_deref()))
        .collect();
    let categories: Vec<&str> = entry
        .categories
        .iter()
        .map(|category| category.label.as_deref().unwrap_or(&category.term))
        .collect();
    json!({
        "id": entry.id,
        "title": text(&entry.title),
        "link": link,
        "published": entry.published.map(|time| time.to_rfc3339()),
        "updated": entry.updated.map(|time| time.to_rfc3339()),
        "summary": summary,
        "authors": authors,
        "categories": categories,
        "enclosures": enclosures(entry),
    })
}

/// RSS `<enclosure>`s (feed-rs reads them as media), Media RSS contents,
/// and Atom links with `rel="enclosure"`.
fn enclosures(entry: &Entry) -> Vec<Value> {
    let media = entry
        .media
        .iter()
        .flat_map(|media| &media.content)
        .filter_map(|content| {
            let url = content.url.as_ref()?;
            Some(json!({
                "url": url.as_str(),
                "type": content.content_type.as_ref().map(ToString::to_string),
                "length": content.size,
            }))
        });
    let links = entry
        .links
        .iter()
        .filter(|link| link.rel.as_deref() == Some("enclosure"))
        .map(|link: &Link| {
            json!({ "url": link.href, "type": link.media_type, "length": link.length })
        });
    let mut all: Vec<Value> = media.chain(links).collect();
    all.dedup_by(|a, b| a["url"] == b["url"]);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_item_without_a_guid_is_known_by_its_link() {
        let rss = r#"<rss version="2.0"><channel><title>t</title>
            <item><title>One</title><link>https://example.com/1</link></item>
            </channel></rss>"#;
        let items = to_json(rss.as_bytes()).unwrap();
        assert_eq!(items[0]["id"], "https://example.com/1");
        assert_eq!(items[0]["title"], "One");
        assert_eq!(items[0]["link"], "https://example.com/1");
    }

    #[test]
    fn refuses_what_is_not_a_feed() {
        for bad in [
            "",
            "hello",
            "<html><body>no</body></html>",
            "{\"a\": 1}",
            "<rss><channel>",
        ] {
            assert!(to_json(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = to_json(&body);
        }

        #[test]
        fn never_panics_on_feedish_text(body in "(<rss><channel>|<feed>|<item>|<entry>|<id>|</id>|<title>|</title>|<link>|</link>|</item>|</entry>|\\{\"version\":\"https://jsonfeed.org/version/1.1\",\"items\":\\[|\\]\\}|x|&amp;){0,30}") {
            let _ = to_json(body.as_bytes());
        }
    }
}
