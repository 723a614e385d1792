//! Paged lists: every page fetched in order and compared as one document.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::cli::{binary, check_refuses, text};
use pollhook::config::Config;

use crate::support::{Daemon, eventually, serve};

/// A GitHub-like API: `/releases?page=N`, two releases a page, three
/// pages, `Link: <...?page=N+1>; rel="next"` on all but the last, page
/// `fail` answering 500; and `/items?cursor=C`, a cursor API of 5 items,
/// two a page.
async fn paged_api(fail: Option<u32>) -> (String, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (releases_log, items_log) = (log.clone(), log.clone());
    let router = Router::new()
        .route(
            "/releases",
            axum::routing::get(move |Query(query): Query<HashMap<String, String>>| {
                let log = releases_log.clone();
                async move {
                    let page: u32 = query.get("page").map_or(1, |page| page.parse().unwrap());
                    log.lock().unwrap().push(format!("releases {page}"));
                    if Some(page) == fail {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let body = serde_json::json!([
                        {"id": page * 10 + 1}, {"id": page * 10 + 2}
                    ]);
                    let mut response =
                        ([("content-type", "application/json")], body.to_string()).into_response();
                    if page < 3 {
                        let link = format!(
                            "</releases?page={}>; rel=\"next\", </releases?page=3>; rel=\"last\"",
                            page + 1
                        );
                        response.headers_mut().insert("link", link.parse().unwrap());
                    }
                    response
                }
            }),
        )
        .route(
            "/items",
            axum::routing::get(move |Query(query): Query<HashMap<String, String>>| {
                let log = items_log.clone();
                async move {
                    let start: usize = query.get("cursor").map_or(0, |c| c.parse().unwrap());
                    log.lock().unwrap().push(format!("items {start}"));
                    let data: Vec<usize> = (start..(start + 2).min(5)).collect();
                    let next = (start + 2 < 5).then(|| (start + 2).to_string());
                    let body = serde_json::json!({"data": data, "meta": {"next_cursor": next}});
                    ([("content-type", "application/json")], body.to_string())
                }
            }),
        );
    (format!("http://{}", serve(router).await), log)
}

async fn once(dir: &std::path::Path, endpoint: &str) -> (bool, String) {
    let path = dir.join("pollhook.toml");
    std::fs::write(&path, endpoint).unwrap();
    let output = binary()
        .args(["once", "-c", path.to_str().unwrap(), "list"])
        .output()
        .await
        .unwrap();
    (output.status.success(), text(&output.stderr))
}

#[tokio::test]
async fn link_pages_are_fetched_in_order_and_compared_as_one_list() {
    let dir = tempfile::tempdir().unwrap();
    let (api, log) = paged_api(None).await;
    let (ok, stderr) = once(
        dir.path(),
        &format!(
            "[[endpoint]]\nname = \"list\"\nurl = \"{api}/releases\"\nevery = \"1m\"\n\
             paginate = {{ next = \"link\" }}\nitems = \".[]\"\nkey = \".id\"\n"
        ),
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(
        *log.lock().unwrap(),
        ["releases 1", "releases 2", "releases 3"]
    );
    for id in [11, 12, 21, 22, 31, 32] {
        assert!(stderr.contains(&format!("\"key\": {id}")), "{id}: {stderr}");
    }
}

#[tokio::test]
async fn max_pages_stops_with_a_warning_and_a_failed_page_fails_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (api, log) = paged_api(None).await;
    let (ok, stderr) = once(
        dir.path(),
        &format!(
            "[[endpoint]]\nname = \"list\"\nurl = \"{api}/releases\"\nevery = \"1m\"\n\
             paginate = {{ next = \"link\" }}\nmax_pages = 2\n"
        ),
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(log.lock().unwrap().len(), 2);
    assert!(stderr.contains("more pages than `max_pages`"), "{stderr}");
    assert!(
        stderr.contains("\"id\": 22") && !stderr.contains("\"id\": 31"),
        "{stderr}"
    );

    let (api, _) = paged_api(Some(2)).await;
    let (ok, stderr) = once(
        dir.path(),
        &format!(
            "[[endpoint]]\nname = \"list\"\nurl = \"{api}/releases\"\nevery = \"1m\"\n\
             paginate = {{ next = \"link\" }}\n"
        ),
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("list: poll failed: HTTP status 500"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_cursor_goes_into_the_query_until_it_is_null() {
    let dir = tempfile::tempdir().unwrap();
    let (api, log) = paged_api(None).await;
    let (ok, stderr) = once(
        dir.path(),
        &format!(
            "[[endpoint]]\nname = \"list\"\nurl = \"{api}/items?limit=2\"\nevery = \"1m\"\n\
             paginate = {{ cursor = \".meta.next_cursor\", param = \"cursor\" }}\n\
             items = \".[].data[]\"\n"
        ),
    )
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(*log.lock().unwrap(), ["items 0", "items 2", "items 4"]);
    for item in 0..5 {
        assert!(
            stderr.contains(&format!("\"key\": {item}")),
            "{item}: {stderr}"
        );
    }
}

#[tokio::test]
async fn paging_mistakes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        "[[endpoint]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\n\
         paginate = { cursor = \".next\" }\n\
         [[endpoint]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/\"\nevery = \"1m\"\nmax_pages = 3\n",
    )
    .unwrap();
    check_refuses(
        &path,
        [
            "pollhook.toml:5:12: endpoint `a`: `paginate.cursor` needs `param`",
            "pollhook.toml:10:13: endpoint `b`: `max_pages` is for paged lists",
        ],
    )
    .await;
}

/// What an operator should see at a glance is in status, from the admin
/// API and in `pollhook status`: the last poll's `max_pages` warning, and
/// a `tls_insecure` endpoint's mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_max_pages_warning_and_the_tls_insecure_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _) = paged_api(None).await;
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[endpoint]]\nname = \"list\"\nurl = \"{api}/releases\"\nevery = \"100ms\"\n\
             paginate = {{ next = \"link\" }}\nmax_pages = 2\n\
             [[endpoint]]\nname = \"device\"\nurl = \"{api}/items\"\nevery = \"100ms\"\ntls_insecure = true\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(Config::load(&path).unwrap());
    let file = dir.path().join("admin.addr");
    eventually("the admin API listens", || file.exists()).await;
    let admin = format!("http://{}", std::fs::read_to_string(&file).unwrap().trim());
    let view = |name: &'static str| {
        let url = format!("{admin}/api/v1/endpoints/{name}");
        async move {
            let body = reqwest::get(url).await.unwrap().text().await.unwrap();
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let mut list = serde_json::Value::Null;
    for _ in 0..500 {
        list = view("list").await;
        if !list["last_warning"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        list["last_warning"],
        "more pages than `max_pages` (2): the rest are not compared"
    );
    assert_eq!(list["marks"], serde_json::json!([]));
    assert_eq!(
        view("device").await["marks"],
        serde_json::json!(["tls_insecure"])
    );

    let output = binary()
        .args(["status", "-c", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    daemon.stop().await;
    let table = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let line = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("list").ends_with("more pages than `max_pages` (2): the rest are not compared"),
        "{table}"
    );
    assert!(line("device").ends_with("tls_insecure"), "{table}");
}
