//! A real headless browser for the dashboard tests: Debian's Chromium driven by ChromeDriver
//! over the W3C WebDriver protocol (plain HTTP and JSON). The test command installs both
//! (`chromium`, `chromium-driver`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Proc, free_port, wait_until};

/// One browser session; the browser and its driver end when it drops.
#[derive(Debug)]
pub struct Browser {
    base: String,
    session: String,
    agent: ureq::Agent,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a fresh profile, its log in `dir`.
    pub fn start(dir: &Path) -> Browser {
        let port = free_port();
        let driver = Proc::spawn(
            Path::new("/usr/bin/chromedriver"),
            &[&format!("--port={port}")],
            dir.join("chromedriver.log"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let ready = wait_until(Duration::from_secs(20), || {
            agent
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true))
        });
        assert!(ready, "chromedriver did not start: {}", driver.log_text());
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let mut browser = Browser {
            base,
            session: String::new(),
            agent,
            _driver: driver,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("DELETE", _) => self.agent.delete(&url).call(),
            _ => self.agent.get(&url).call(),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "webdriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub fn open(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until `cond` holds for its value, or `timeout`; the last value.
    pub fn wait_for(
        &self,
        timeout: Duration,
        script: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Result<Value, Value> {
        let mut last = Value::Null;
        let held = wait_until(timeout, || {
            last = self.eval(script);
            cond(&last)
        });
        if held { Ok(last) } else { Err(last) }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(&url).call();
        }
    }
}
