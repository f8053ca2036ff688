//! A thin W3C WebDriver client for the UI's end-to-end tests: starts Debian's `chromedriver`
//! on a free loopback port and drives a real headless Chromium through it over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Keys for [`Browser::type_into`].
pub const CONTROL: char = '\u{E009}';
pub const ENTER: char = '\u{E007}';
/// Releases held modifier keys.
pub const RELEASE: char = '\u{E000}';

/// A running chromedriver with one Chromium session; both end when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    /// Where downloads land.
    pub downloads: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Result<Browser, String> {
        for binary in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            if !Path::new(binary).exists() {
                return Err(format!(
                    "{binary} is missing: install Debian's chromium and chromium-driver (tests/run.sh does)"
                ));
            }
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start chromedriver: {e}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err("chromedriver did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).map_err(|e| e.to_string())?;
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-quic", "--no-first-run",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage",
                        format!("--user-data-dir={}", profile.path().join("profile").display()),
                        format!("--window-size={width},{height}"),
                    ],
                    "prefs": {
                        "download.default_directory": downloads.display().to_string(),
                        "download.prompt_for_download": false,
                    },
                },
            } }
        });
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
            downloads,
        };
        let answer = browser.call("POST", "/session", capabilities).await?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {answer}"))?
            .to_string();
        // Headless Chromium downloads only where it is told to.
        let downloads = browser.downloads.display().to_string();
        browser
            .command(
                "POST",
                "/goog/cdp/execute",
                json!({ "cmd": "Browser.setDownloadBehavior", "params": { "behavior": "allow", "downloadPath": downloads } }),
            )
            .await?;
        browser.set_size(width, height).await?;
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {}", answer["value"]));
        }
        Ok(answer["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn set_size(&self, width: u32, height: u32) -> Result<(), String> {
        self.command(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await
        .map(|_| ())
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.command("POST", "/url", json!({ "url": url }))
            .await
            .map(|_| ())
    }

    pub async fn url(&self) -> Result<String, String> {
        Ok(self
            .command("GET", "/url", Value::Null)
            .await?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The elements matching a CSS selector (their references).
    pub async fn find_all(&self, css: &str) -> Result<Vec<String>, String> {
        let found = self
            .command(
                "POST",
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits up to `timeout` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self.find_all(css).await?.into_iter().next() {
                return Ok(first);
            }
            if Instant::now() > deadline {
                let url = self.url().await.unwrap_or_default();
                let body = self.text_of("body").await.unwrap_or_default();
                return Err(format!("no `{css}` within {timeout:?} on {url}:\n{body}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a JavaScript expression is true.
    pub async fn wait_until(&self, expression: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self
                .eval(&format!("return !!({expression});"), vec![])
                .await?;
            if value == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let url = self.url().await.unwrap_or_default();
                return Err(format!(
                    "`{expression}` did not become true within {timeout:?} on {url}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, element: &str) -> Result<(), String> {
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await
            .map(|_| ())
    }

    pub async fn clear(&self, element: &str) -> Result<(), String> {
        self.command("POST", &format!("/element/{element}/clear"), json!({}))
            .await
            .map(|_| ())
    }

    /// Types text (and the special keys above) into an element, as a user would.
    pub async fn type_into(&self, element: &str, text: &str) -> Result<(), String> {
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .map(|_| ())
    }

    pub async fn text(&self, element: &str) -> Result<String, String> {
        Ok(self
            .command("GET", &format!("/element/{element}/text"), Value::Null)
            .await?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// The visible text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> Result<String, String> {
        let element = self
            .find_all(css)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| format!("no `{css}`"))?;
        self.text(&element).await
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        use base64::Engine;
        let png = self.command("GET", "/screenshot", Value::Null).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, bytes).map_err(|e| e.to_string())
    }

    /// A PNG of the whole page (Chromium's full-page capture through the DevTools protocol).
    pub async fn screenshot_full(&self, path: &Path) -> Result<(), String> {
        use base64::Engine;
        let shot = self
            .command(
                "POST",
                "/goog/cdp/execute",
                json!({ "cmd": "Page.captureScreenshot", "params": { "captureBeyondViewport": true, "format": "png" } }),
            )
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, bytes).map_err(|e| e.to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // End the session first, so chromedriver closes the Chromium it started.
            delete_blocking(&self.base, &format!("/session/{}", self.session));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A plain blocking HTTP DELETE (Drop cannot await).
fn delete_blocking(base: &str, path: &str) {
    use std::io::{Read, Write};
    let Some(host) = base.strip_prefix("http://") else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let request = format!(
        "DELETE {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}
