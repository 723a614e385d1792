//! A real browser for the dashboard's tests: headless Debian Chromium,
//! driven through its chromedriver on a free 127.0.0.1 port, spoken to in
//! W3C WebDriver (JSON over HTTP: the few commands the tests need). One
//! browser at a time (two cores are shared), each with its own
//! chromedriver, killed when the browser is dropped.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How WebDriver names an element in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser at a time over the whole test binary.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    _driver: tokio::process::Child,
    _turn: SemaphorePermit<'static>,
}

impl Browser {
    /// A headless Chromium with a laptop-sized window.
    pub async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "`{path}` is missing: install the Debian package `{package}` (scripts/test does)"
            );
        }
        let turn = ONE_AT_A_TIME.acquire().await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,1000"],
            },
        }}});
        let url = format!("http://127.0.0.1:{port}");
        let mut last_error = String::new();
        // chromedriver takes a moment to listen: at most 10 s.
        for _ in 0..200 {
            match http
                .post(format!("{url}/session"))
                .header("content-type", "application/json")
                .body(capabilities.to_string())
                .send()
                .await
            {
                Ok(response) => {
                    let answer: Value =
                        serde_json::from_str(&response.text().await.unwrap()).unwrap();
                    let id = answer["value"]["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("chromedriver made no session: {answer}"));
                    return Browser {
                        session: format!("{url}/session/{id}"),
                        http,
                        _driver: driver,
                        _turn: turn,
                    };
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not listen: {last_error}");
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if method == reqwest::Method::POST {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let ok = response.status().is_success();
        let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        match ok {
            true => Ok(answer["value"].clone()),
            false => Err(answer["value"].clone()),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// The first element `css` finds, waiting up to 10 s for it.
    async fn find(&self, css: &str) -> String {
        let mut last = Value::Null;
        for _ in 0..200 {
            let query = json!({"using": "css selector", "value": css});
            match self.command(reqwest::Method::POST, "/element", query).await {
                Ok(element) => return element[ELEMENT].as_str().unwrap().to_string(),
                Err(error) => last = error,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no `{css}` on the page: {last}");
    }

    /// How many elements `css` finds now.
    pub async fn count(&self, css: &str) -> usize {
        let query = json!({"using": "css selector", "value": css});
        let found = self
            .command(reqwest::Method::POST, "/elements", query)
            .await
            .unwrap();
        found.as_array().map_or(0, Vec::len)
    }

    /// The text of the first element `css` finds, waiting up to 10 s for it.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                Value::Null,
            )
            .await
            .unwrap();
        text.as_str().unwrap_or_default().to_string()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot click `{css}`: {error}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .unwrap();
    }

    /// Logs in through the form with `token`.
    pub async fn log_in(&self, admin: &str, token: &str) {
        self.goto(&format!("{admin}/login")).await;
        self.type_into("#token", token).await;
        self.click("form button[type=submit]").await;
        self.find("#endpoints").await;
    }

    /// Waits up to 10 s until the page's text contains `wanted`, reloading
    /// it every 100 ms (the pages are server-rendered).
    pub async fn reload_until(&self, url: &str, wanted: &str) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            self.goto(url).await;
            text = self.text("main").await;
            if text.contains(wanted) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{wanted}` never appeared at {url}; last seen:\n{text}");
    }

    /// With `POLLHOOK_SCREENSHOTS` set to a folder, saves the page there as
    /// `dashboard-<name>.png` (how docs/ gets its pictures).
    pub async fn screenshot(&self, name: &str) {
        if let Some(folder) = std::env::var_os("POLLHOOK_SCREENSHOTS") {
            let png = self
                .command(reqwest::Method::GET, "/screenshot", Value::Null)
                .await
                .unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(png.as_str().unwrap())
                .unwrap();
            let path = std::path::Path::new(&folder).join(format!("dashboard-{name}.png"));
            std::fs::write(path, png).unwrap();
        }
    }

    /// Ends the session (the browser quits); chromedriver goes on drop.
    pub async fn close(self) {
        self.command(reqwest::Method::DELETE, "", Value::Null)
            .await
            .unwrap();
    }
}
