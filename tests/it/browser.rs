//! A real browser for the dashboard's tests: headless Debian Chromium,
//! driven by fantoccini through its chromedriver on a free 127.0.0.1 port.
//! One browser at a time (two cores are shared), each with its own
//! chromedriver, killed when the browser is dropped.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long an element, or chromedriver itself, may take to appear.
const PATIENCE: Duration = Duration::from_secs(10);

/// One browser at a time over the whole test binary.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

pub struct Browser {
    client: Client,
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
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,1000"],
            },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last_error = String::new();
        // chromedriver takes a moment to listen.
        for _ in 0..200 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        _driver: driver,
                        _turn: turn,
                    };
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(PATIENCE / 200).await;
        }
        panic!("chromedriver made no session: {last_error}");
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// The first element `css` finds, waiting for it.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no `{css}` on the page: {error}"))
    }

    /// How many elements `css` finds now.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The text of the first element `css` finds, waiting for it.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("cannot click `{css}`: {error}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
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
            let png = self.client.screenshot().await.unwrap();
            let path = std::path::Path::new(&folder).join(format!("dashboard-{name}.png"));
            std::fs::write(path, png).unwrap();
        }
    }

    /// Ends the session (the browser quits); chromedriver goes on drop.
    pub async fn close(self) {
        self.client.close().await.unwrap();
    }
}
