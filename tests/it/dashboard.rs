//! The web dashboard of the real daemon, in a real browser (headless
//! Chromium through chromedriver): the endpoint list, an endpoint's change,
//! "replay", "poll now", "pause" and "resume", the live page; and, over
//! plain HTTP, that nothing is given or done without the token.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{admin_address, start_daemon, write_config};
use crate::browser::Browser;
use crate::support::{Api, Daemon, Receiver, Reply, eventually};

const TOKEN: &str = "dash-token";

/// A daemon with the admin token on `dir/config.toml`, and its address.
async fn start(dir: &Path, endpoints: &str, receiver: &Receiver) -> (Daemon, String) {
    let token = format!("token = \"{TOKEN}\"");
    let config = write_config(&dir.join("config.toml"), dir, endpoints, receiver, &token);
    let daemon = Daemon::start(config);
    (daemon, admin_address(dir).await)
}

fn endpoint(name: &str, api: &Api, extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}\n",
        api.url()
    )
}

/// What the admin API says of an endpoint, asked with the token.
async fn endpoint_view(admin: &str, name: &str) -> Value {
    let body = reqwest::Client::new()
        .get(format!("{admin}/api/v1/endpoints/{name}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn wait_for_version(admin: &str, name: &str, version: u64) {
    for _ in 0..1000 {
        if endpoint_view(admin, name).await["version"].as_u64() >= Some(version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("`{name}` never reached version {version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_list_shows_every_endpoint_and_a_failing_ones_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"ok":1}"#)).await;
    let broken = Api::start(Reply {
        status: 500,
        ..Reply::json("{}")
    })
    .await;
    let receiver = Receiver::start().await;
    let endpoints = [
        endpoint("weather", &api, "every = \"100ms\""),
        endpoint("broken", &broken, "every = \"100ms\""),
    ]
    .concat();
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    let text = browser
        .reload_until(&format!("{admin}/"), "HTTP status 500")
        .await;
    assert!(text.contains("weather"), "{text}");
    assert!(text.contains("broken"), "{text}");
    assert!(text.contains("failing"), "{text}");
    assert_eq!(browser.count("#endpoints tbody tr").await, 2);
    // Search narrows the list.
    browser.goto(&format!("{admin}/?q=weath")).await;
    let rows = browser.text("#endpoints tbody").await;
    assert!(
        rows.contains("weather") && !rows.contains("broken"),
        "{rows}"
    );
    browser.goto(&format!("{admin}/")).await;
    browser.screenshot("endpoints").await;
    browser.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_page_shows_a_changes_old_and_new_values() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"price":19.99,"name":"lamp"}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("shop", &api, "every = \"100ms\"");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    wait_for_version(&admin, "shop", 1).await;
    api.set(Reply::json(r#"{"price":14.99,"name":"lamp"}"#));
    wait_for_version(&admin, "shop", 2).await;

    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    browser.click("a[href='/endpoints/shop']").await;
    assert_eq!(browser.text("#change-heading").await, "From version 1 to 2");
    assert_eq!(browser.text("#change li.changed del").await, "19.99");
    assert_eq!(browser.text("#change li.changed ins").await, "14.99");
    assert!(
        browser
            .text("#change li.changed .key")
            .await
            .contains("price")
    );
    let current = browser.text("pre.document").await;
    assert!(current.contains("14.99"), "{current}");
    let events = browser.text("#events").await;
    assert!(events.contains("endpoint.changed"), "{events}");
    assert!(events.contains("receiver:"), "{events}");
    browser.screenshot("endpoint").await;

    // "Preview" is the dry run: it shows the document and stores nothing.
    browser.click("#preview").await;
    assert_eq!(browser.text("#preview-result").await, "unchanged");
    assert_eq!(endpoint_view(&admin, "shop").await["version"], 2);
    browser.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_a_dead_letter_makes_the_receiver_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let endpoints = endpoint("orders", &api, "every = \"1h\"\nemit_initial = true");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    // The first poll is somewhere in the first hour: ask for it now.
    browser.goto(&format!("{admin}/endpoints/orders")).await;
    browser.click("#poll-now").await;
    // Leaving before the form's answer arrives could cancel it.
    browser.text("[role=status]").await;
    let text = browser
        .reload_until(&format!("{admin}/deliveries"), "Dead letters (1)")
        .await;
    assert!(text.contains("endpoint.changed"), "{text}");
    browser.screenshot("deliveries").await;
    assert!(receiver.accepted().is_empty());

    receiver.answer(200);
    browser.click("button.replay").await;
    eventually("the replayed event is delivered", || {
        receiver.accepted().len() == 1
    })
    .await;
    let text = browser
        .reload_until(&format!("{admin}/deliveries"), "Dead letters (0)")
        .await;
    assert!(text.contains("No dead letter"), "{text}");
    browser.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_now_polls() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    // New Year's midnight: never during the test.
    let endpoints = endpoint("yearly", &api, "cron = \"0 0 1 1 *\"");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    browser.goto(&format!("{admin}/endpoints/yearly")).await;
    assert_eq!(api.requests(), 0);
    browser.click("#poll-now").await;
    assert!(
        browser
            .text("[role=status]")
            .await
            .contains("Asked for a poll now")
    );
    eventually("the endpoint is polled", || api.requests() == 1).await;
    wait_for_version(&admin, "yearly", 1).await;
    browser.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_the_polls_and_the_list_shows_it_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("busy", &api, "every = \"100ms\"");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    browser.goto(&format!("{admin}/endpoints/busy")).await;
    browser.click("#pause").await;
    assert!(browser.text("#paused").await.contains("paused"));
    assert!(endpoint_view(&admin, "busy").await["paused_since_ms"].is_u64());
    // A poll that was running may still end; then nothing.
    let polled = api.requests();
    browser.goto(&format!("{admin}/")).await;
    assert_eq!(browser.text("tr.state-paused th").await, "busy");
    assert!(api.requests() <= polled + 1, "polled while paused");
    browser.goto(&format!("{admin}/endpoints/busy")).await;
    browser.click("#resume").await;
    // The answer to the form is the page again, now with a Pause button.
    browser.text("#pause").await;
    assert_eq!(browser.count("#paused").await, 0);
    eventually("polled again", || api.requests() > polled + 2).await;
    browser.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_new_event_without_reload() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"v":1}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("feed", &api, "every = \"100ms\"");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    wait_for_version(&admin, "feed", 1).await;
    let browser = Browser::start().await;
    browser.log_in(&admin, TOKEN).await;
    browser.goto(&format!("{admin}/live?endpoint=feed")).await;
    for _ in 0..100 {
        if browser.text("#live-state").await == "Following events as they happen." {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        browser.text("#live-state").await,
        "Following events as they happen."
    );
    api.set(Reply::json(r#"{"v":2}"#));
    let shown = browser.text("#live li.live-event").await;
    assert!(shown.contains("endpoint.changed · feed"), "{shown}");
    assert!(shown.contains("\"/v\""), "{shown}");
    browser.screenshot("live").await;
    browser.close().await;
    daemon.stop().await;
}

/// The status of a request with no token, no cookie, and redirects not followed.
async fn status_of(method: reqwest::Method, url: &str, cookie: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.request(method, url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=forged&id=x&target=receiver")
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_every_page_and_action_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"v":1}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("data", &api, "every = \"100ms\"");
    let (daemon, admin) = start(dir.path(), &endpoints, &receiver).await;
    use reqwest::Method;
    for page in [
        "/",
        "/endpoints/data",
        "/deliveries",
        "/live",
        "/?q=data&page=0",
    ] {
        assert_eq!(
            status_of(Method::GET, &format!("{admin}{page}"), None).await,
            (303, "/login".to_string()),
            "{page}"
        );
    }
    let actions = [
        "/endpoints/data/poll",
        "/endpoints/data/pause",
        "/endpoints/data/resume",
        "/endpoints/data/preview",
        "/deliveries/replay",
        "/deliveries/resume",
        "/logout",
    ];
    for action in actions {
        let (status, _) = status_of(Method::POST, &format!("{admin}{action}"), None).await;
        assert_eq!(status, 401, "{action}");
    }
    // A made-up or stale session is no session.
    let stale = "pollhook_session=0123456789abcdef";
    assert_eq!(
        status_of(Method::GET, &format!("{admin}/"), Some(stale))
            .await
            .0,
        303
    );
    assert_eq!(
        status_of(Method::GET, &format!("{admin}/api/v1/events"), Some(stale))
            .await
            .0,
        401
    );
    let wrong = reqwest::Client::new()
        .post(format!("{admin}/login"))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    // Logged in, a form without the session's CSRF token is refused too.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{admin}/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    assert_eq!(
        status_of(Method::GET, &format!("{admin}/"), Some(session))
            .await
            .0,
        200
    );
    for action in actions {
        let (status, _) = status_of(Method::POST, &format!("{admin}{action}"), Some(session)).await;
        assert_eq!(status, 403, "{action}");
    }
    // The session reads the API (the live page's stream), but changes nothing there.
    assert_eq!(
        status_of(
            Method::GET,
            &format!("{admin}/api/v1/endpoints"),
            Some(session)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        status_of(
            Method::POST,
            &format!("{admin}/api/v1/endpoints/data/poll"),
            Some(session)
        )
        .await
        .0,
        401
    );
    // The bearer header does for pages too.
    let page = reqwest::Client::new()
        .get(format!("{admin}/deliveries"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Target receiver"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_set_a_first_visit_opens_a_session_whose_forms_need_its_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"v":1}"#)).await;
    let receiver = Receiver::start().await;
    let endpoints = endpoint("data", &api, "cron = \"0 0 1 1 *\"");
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    let page = reqwest::get(format!("{admin}/endpoints/data"))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    let session = cookie.split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    // Another site's form: no cookie (SameSite=Strict), or a made-up token.
    let poll = format!("{admin}/endpoints/data/poll");
    assert_eq!(status_of(reqwest::Method::POST, &poll, None).await.0, 403);
    assert_eq!(
        status_of(reqwest::Method::POST, &poll, Some(&session))
            .await
            .0,
        403
    );
    assert_eq!(api.requests(), 0);
    let posted = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(&poll)
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 303);
    eventually("the endpoint is polled", || api.requests() == 1).await;
    daemon.stop().await;
}
