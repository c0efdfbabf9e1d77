//! The log-viewer page of `logstream dev` in a real headless Chromium, driven over
//! the WebDriver protocol by Debian's chromedriver (both installed by
//! `scripts/ensure-deps --test`): the page shows the history, then lines posted after
//! it opened, stderr marked, stages, and the final status; on a big log it keeps the
//! DOM small, opens permalinks, loads earlier pages as they scroll into view, searches,
//! folds and finds the first error.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A process group of its own, so the browser it starts dies with it.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: run scripts/ensure-deps --test");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile =
            std::env::temp_dir().join(format!("logstream-chromium-{}-{port}", std::process::id()));
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let res: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {res}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
            profile,
        }
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let res: Value = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        res["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("url", json!({ "url": url })).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until `script` returns true.
    async fn wait_for(&self, what: &str, script: &str) {
        let started = Instant::now();
        loop {
            if self.eval(script).await == json!(true) {
                return;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let text = self.eval("return document.body.innerText").await;
                panic!("timed out waiting for {what}; page shows: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let res: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(b64) = res["value"].as_str() {
            use base64::Engine;
            if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b64) {
                let _ = std::fs::write(path, png);
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: killing chromedriver alone leaves Chromium running.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn the_viewer_page_follows_a_job_live_to_its_final_status() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let hostile = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"#;
    env.post_json(
        &job,
        &json!({"lines": [
            {"text": "history line one"},
            {"text": hostile},
            {"text": "history line two"},
        ]}),
    )
    .await;
    env.set_status(&job, "running").await;

    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    // The token in the fragment: never sent to a server, and removed at once.
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the history",
            "return document.querySelector('.lv-log').innerText.includes('history line two')",
        )
        .await;
    let address = browser.eval("return location.href").await;
    assert_eq!(
        address,
        json!(env.url(&format!("/?job={job}"))),
        "the address bar names the job, not the token"
    );
    // Log text is text: shown as written, never run (the page's CSP forbids inline
    // script too, and the page works under it: its own script is a file).
    let shown = browser
        .eval("return [...document.querySelectorAll('.line .t')].map(e => e.textContent)")
        .await;
    assert!(
        shown.as_array().unwrap().iter().any(|t| t == hostile),
        "{shown}"
    );
    assert_eq!(
        browser
            .eval("return [typeof window.pwned, document.querySelectorAll('.lv-log img, .lv-log script').length]")
            .await,
        json!(["undefined", 0])
    );

    // Posted after the page opened: they arrive over EventSource.
    env.post_json(&job, &json!({"lines": [{"stream": "stdout", "text": "live stdout line"}, {"stream": "stderr", "text": "live stderr line"}]}))
        .await;
    env.http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "deploy", "status": "started"}))
        .send()
        .await
        .unwrap();
    browser
        .wait_for(
            "the live lines",
            "return document.querySelector('.lv-log').innerText.includes('live stderr line')",
        )
        .await;
    browser
        .wait_for(
            "the stage marker",
            "return [...document.querySelectorAll('.stage')].some(e => e.textContent.includes('deploy'))",
        )
        .await;
    let stderr_marked = browser
        .eval("return [...document.querySelectorAll('.line.stderr .t')].map(e => e.textContent).join('|')")
        .await;
    assert_eq!(
        stderr_marked,
        json!("live stderr line"),
        "only the stderr line is marked as stderr"
    );

    env.end_with(&job, "ready", 0).await;
    // The final status with the exit code and how long the job ran.
    browser
        .wait_for(
            "the final status",
            r"return /^ready \(exit code 0, [0-9.]+m?s\)$/.test(document.querySelector('.lv-status').textContent)",
        )
        .await;
    let lines = browser
        .eval("return document.querySelector('.lv-log').innerText")
        .await;
    let text = lines.as_str().unwrap();
    for expected in [
        "history line one",
        "history line two",
        "onerror=",
        "live stdout line",
        "live stderr line",
        "job ready",
    ] {
        assert_eq!(
            text.matches(expected).count(),
            1,
            "{expected:?} shown exactly once in:\n{text}"
        );
    }
    browser.screenshot(&shot_path("viewer")).await;
}

#[tokio::test]
async fn the_page_is_sent_with_a_csp_no_framing_and_no_referrer() {
    let env = env().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/viewer.js", "text/javascript"),
        ("/viewer.css", "text/css"),
        ("/logstream-viewer.js", "text/javascript"),
        ("/logstream-viewer.css", "text/css"),
    ] {
        let res = env.http.get(env.url(path)).send().await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK, "{path}");
        let h = res.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let page = env
        .http
        .get(env.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>")
            && !page.contains("<style>")
            && !["onclick=", "onload=", "onerror=", "javascript:"]
                .iter()
                .any(|handler| page.contains(handler)),
        "no inline script, style or handler in the page"
    );
}

#[tokio::test]
async fn an_older_link_with_the_token_in_the_query_loses_it_at_once() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "seen", 1).await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}&access_token={token}")))
        .await;
    browser
        .wait_for(
            "the line",
            "return document.querySelector('.lv-log').innerText.includes('seen 0')",
        )
        .await;
    assert_eq!(
        browser.eval("return location.href").await,
        json!(env.url(&format!("/?job={job}")))
    );
}

#[tokio::test]
async fn the_share_button_makes_a_link_that_opens_the_job_without_an_account() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.post_lines(&job, "shared line", 1).await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the line",
            "return document.querySelector('.lv-log').innerText.includes('shared line 0')",
        )
        .await;
    browser
        .eval("document.getElementById('share').click(); return null")
        .await;
    browser
        .wait_for(
            "the link",
            "return !document.getElementById('shared').hidden",
        )
        .await;
    let link = browser
        .eval("return document.getElementById('share-link').value")
        .await;
    let link = link.as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&env.url(&format!("/?job={job}#access_token=lss1.")))
            && !link.contains(&token),
        "{link}"
    );
    let expiry = browser
        .eval("return document.getElementById('share-expiry').textContent")
        .await;
    assert!(expiry.as_str().unwrap().starts_with("until "), "{expiry}");

    // Opened in a tab of its own (no session token): the job is read through the link
    // alone, and the page offers no share button to its holder.
    browser.eval("sessionStorage.clear(); return null").await;
    browser.goto(&link).await;
    browser
        .wait_for(
            "the line through the link",
            "return document.querySelector('.lv-log').innerText.includes('shared line 0')",
        )
        .await;
    assert_eq!(
        browser
            .eval(
                "return [location.href.includes('lss1.'), document.getElementById('share').hidden]"
            )
            .await,
        json!([false, true])
    );
}

#[tokio::test]
async fn a_page_opened_before_its_job_exists_waits_for_it_then_follows_it() {
    let env = env().await;
    let job = job_id("not-yet");
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the page saying it waits",
            "return document.querySelector('.lv-msg').textContent.startsWith('Waiting for job')",
        )
        .await;

    // The pipeline starts: the page finds the job at its next look and follows it live.
    let res = env.create_job_as(&job, "alice").await;
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    env.set_status(&job, "running").await;
    env.post_lines(&job, "first", 1).await;
    browser
        .wait_for(
            "the job's first line",
            "return document.querySelector('.lv-log').innerText.includes('first 0')",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelector('.lv-msg').textContent")
            .await,
        json!("")
    );
    env.post_lines(&job, "live", 1).await;
    browser
        .wait_for(
            "a line posted after",
            "return document.querySelector('.lv-log').innerText.includes('live 0')",
        )
        .await;
}

#[tokio::test]
async fn a_lines_colours_show_as_classes_and_hostile_escapes_stay_text() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let hostile = "\u{1b}[31m<img src=x onerror=\"window.pwned=1\">\u{1b}]8;;javascript:window.pwned=2\u{7}link\u{1b}]8;;\u{7}\u{1b}[0m";
    env.post_json(
        &job,
        &json!({"lines": [
            {"text": "\u{1b}[1;31merror\u{1b}[0m: \u{1b}[38;5;208mwarm\u{1b}[0m \u{1b}[38;2;0;0;255m\u{1b}[4mblue\u{1b}[24m done"},
            {"text": hostile},
            {"text": "\u{1b}[3;2mquiet\u{1b}[22;23m \u{1b}[97;41mloud"},
        ]}),
    )
    .await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the coloured lines",
            "return document.querySelector('.lv-log').innerText.includes('loud')",
        )
        .await;
    // Each run of text is a span whose classes say its colour and style.
    let runs = browser
        .eval(
            "return [...document.querySelectorAll('.line .t')].map(t => \
             [...t.childNodes].map(n => [n.textContent, n.className || '']))",
        )
        .await;
    assert_eq!(
        runs,
        json!([
            [
                ["error", "c-fg-1 b"],
                [": ", ""],
                ["warm", "c-fg-208"],
                [" ", ""],
                ["blue", "c-fg-21 u"],
                [" done", "c-fg-21"]
            ],
            [["<img src=x onerror=\"window.pwned=1\">link", "c-fg-1"]],
            [["quiet", "d i"], [" ", ""], ["loud", "c-fg-15 c-bg-1"]]
        ])
    );
    // The markup and the link were text: nothing ran, no element but spans was made.
    assert_eq!(
        browser.eval("return window.pwned === undefined").await,
        json!(true)
    );
    assert_eq!(
        browser
            .eval(
                "return document.querySelectorAll('.lv-log img, .lv-log a, .lv-log script').length"
            )
            .await,
        json!(0)
    );
    // A class gives the colour: the palette's red for c-fg-1.
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.querySelector('.c-fg-1')).color")
            .await,
        json!("rgb(255, 123, 114)")
    );
    browser.screenshot(&shot_path("viewer-colours")).await;
}

/// Where a test's screenshot goes: `target/tmp/NAME.png`, for a person to look at.
fn shot_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"))
}

/// Posts `texts` as stdout lines (stderr where `stderr` says so), 500 per request.
async fn post_many(env: &Env, job: &str, texts: &[String], stderr: impl Fn(usize) -> bool) {
    for (chunk, lines) in texts.chunks(500).enumerate() {
        let lines: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let stream = if stderr(chunk * 500 + i) {
                    "stderr"
                } else {
                    "stdout"
                };
                json!({"stream": stream, "text": text})
            })
            .collect();
        let res = env.post_json(job, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), reqwest::StatusCode::OK);
    }
}

/// The entry numbers of the rows in the DOM, in order.
async fn rows(browser: &Browser) -> Vec<u64> {
    let shown = browser
        .eval(
            "return [...document.querySelectorAll('.lv-rows .row')].map(r => Number(r.dataset.n))",
        )
        .await;
    serde_json::from_value(shown).unwrap()
}

#[tokio::test]
async fn a_big_log_opens_at_a_permalink_with_few_rows_and_loads_searches_folds_and_finds_errors() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    // 20 000 entries, entry n = line n - 1: a group (two markers, two stage entries)
    // around lines 100-300, one stderr line at 15 000.
    let texts: Vec<String> = (0..20_000)
        .map(|i| match i {
            100 => "::group::Compile".to_owned(),
            300 => "::endgroup::".to_owned(),
            _ => format!("big {i}"),
        })
        .collect();
    post_many(&env, &job, &texts, |i| i == 15_000).await;

    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the newest lines",
            "return document.querySelector('.lv-log').innerText.includes('big 19999')",
        )
        .await;
    let shown = rows(&browser).await;
    assert!(
        shown.len() < 150 && shown.last() == Some(&20_000),
        "only the rows on screen, newest last: {} rows",
        shown.len()
    );

    // A permalink opens the page at its line, fetched with `at`.
    browser.goto(&env.url(&format!("/?job={job}#L12345"))).await;
    browser
        .wait_for(
            "line 12345, marked",
            "const r = document.querySelector('.row.target'); \
             return !!r && r.dataset.n === '12345' && r.querySelector('.t').textContent === 'big 12344'",
        )
        .await;
    assert_eq!(browser.eval("return location.hash").await, json!("#L12345"));
    browser.screenshot(&shot_path("viewer-permalink")).await;
    // Clicking a line number makes it the permalink.
    browser
        .eval("document.querySelector('.row[data-n=\"12350\"] .ln').click(); return null")
        .await;
    assert_eq!(browser.eval("return location.hash").await, json!("#L12350"));

    // Scrolled to the top, the first lines are fetched by themselves.
    browser
        .eval("document.querySelector('.lv-log').scrollTop = 0; return null")
        .await;
    browser
        .wait_for(
            "the first line",
            "const r = document.querySelector('.row[data-n=\"1\"] .t'); return !!r && r.textContent === 'big 0'",
        )
        .await;
    assert!(rows(&browser).await.len() < 150);

    // The group folds: the row after it is the one after its end. (A new `#L` on the
    // open job moves to that line.)
    browser.eval("location.hash = '#L101'; return null").await;
    browser
        .wait_for(
            "the group's line",
            "const r = document.querySelector('.row.target'); return !!r && r.dataset.n === '101'",
        )
        .await;
    browser
        .eval("document.querySelector('.row[data-n=\"101\"] .t').click(); return null")
        .await;
    browser
        .wait_for(
            "the group folded",
            "const r = document.querySelector('.row[data-n=\"101\"]'); \
             return !!r && r.classList.contains('folded') && r.nextElementSibling.dataset.n === '302'",
        )
        .await;
    let stage = browser
        .eval("return document.querySelector('.row[data-n=\"101\"] .t').textContent")
        .await;
    assert_eq!(stage, json!("▸ Compile — started (200 entries hidden)"));
    browser.screenshot(&shot_path("viewer-folded")).await;

    // Search runs on the server over the whole job: the match is far below the screen.
    browser
        .eval(
            "const q = document.querySelector('.lv-q'); q.value = 'BIG 17000'; \
             q.dispatchEvent(new Event('input')); \
             document.querySelector('.lv-next').click(); return null",
        )
        .await;
    browser
        .wait_for(
            "the match",
            "const r = document.querySelector('.row.current'); return !!r && r.dataset.n === '17001'",
        )
        .await;
    browser.screenshot(&shot_path("viewer-search")).await;

    // The first error: the stderr line.
    browser
        .eval("document.querySelector('.lv-error').click(); return null")
        .await;
    browser
        .wait_for(
            "the first error",
            "const r = document.querySelector('.row.target'); return !!r && r.dataset.n === '15001' \
             && r.classList.contains('stderr')",
        )
        .await;

    // Times on demand.
    browser
        .eval("document.querySelector('.lv-times').click(); return null")
        .await;
    let time = browser
        .eval("const t = document.querySelector('.row.target .ts'); return [getComputedStyle(t).display, t.textContent]")
        .await;
    assert_ne!(time[0], json!("none"));
    let shape: String = time[1]
        .as_str()
        .unwrap()
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "99:99:99.999", "{time}");
    browser
        .screenshot(&shot_path("viewer-first-error-with-times"))
        .await;
}

#[tokio::test]
async fn a_burst_of_ten_thousand_lines_is_drawn_at_once_and_followed_only_from_the_bottom() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the job",
            "return document.querySelector('.lv-status').textContent === 'running'",
        )
        .await;
    let lines: Vec<Value> = (0..10_000)
        .map(|i| json!({"text": format!("burst {i}")}))
        .collect();
    let started = Instant::now();
    let res = env.post_json(&job, &json!({ "lines": lines })).await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let posted = started.elapsed();
    browser
        .wait_for(
            "the burst's last line, followed",
            "return document.querySelector('.lv-log').innerText.includes('burst 9999')",
        )
        .await;
    eprintln!(
        "10 000 lines: POST answered in {posted:?}, last line on screen {:?} after the POST began",
        started.elapsed()
    );
    assert!(rows(&browser).await.len() < 150);

    // A reader who scrolled up is not pulled down: new lines wait behind a button.
    browser
        .eval("document.querySelector('.lv-log').scrollTop = 0; return null")
        .await;
    browser
        .wait_for(
            "the top",
            "return !!document.querySelector('.row[data-n=\"2\"] .t')",
        )
        .await;
    env.post_lines(&job, "after scrolling", 1).await;
    browser
        .wait_for(
            "the new-lines button",
            "return !document.querySelector('.lv-newer').hidden",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelector('.lv-log').scrollTop")
            .await,
        json!(0)
    );
    browser
        .screenshot(&shot_path("viewer-new-lines-waiting"))
        .await;
}

/// Measures, does not check: what the page costs on big logs, for the README. Run with
/// `cargo test -p logstream-cli --test it viewer_e2e::measure -- --ignored --nocapture`
/// (the service is the test build, so its ingest is slower than a release build's).
#[tokio::test]
#[ignore = "a measurement, not a test: prints figures"]
async fn measure_the_viewer_on_big_logs() {
    let env = env().await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 3600);
    let probe = "window.__lag = 0; window.__long = []; \
        new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); }) \
          .observe({ type: 'longtask', buffered: true }); \
        let last = performance.now(); \
        setInterval(() => { const now = performance.now(); window.__lag = Math.max(window.__lag, now - last - 50); last = now; }, 50); \
        return null";
    let report = "return { lag_ms: Math.round(window.__lag), long_tasks: window.__long.length, \
        long_total_ms: Math.round(window.__long.reduce((a, b) => a + b, 0)), \
        long_max_ms: Math.round(Math.max(0, ...window.__long)), \
        heap_mb: Math.round(performance.memory.usedJSHeapSize / 1e6), \
        dom_nodes: document.getElementsByTagName('*').length }";

    // 200 000 lines posted live to an open page.
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the job",
            "return document.querySelector('.lv-status').textContent === 'running'",
        )
        .await;
    browser.eval(probe).await;
    let started = Instant::now();
    for batch in 0..400 {
        let lines: Vec<Value> = (0..500)
            .map(
                |i| json!({"text": format!("live {} compiling crate number {i}", batch * 500 + i)}),
            )
            .collect();
        let res = env.post_json(&job, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), reqwest::StatusCode::OK);
    }
    let posted = started.elapsed();
    browser
        .wait_for(
            "the last live line",
            "return document.querySelector('.lv-log').innerText.includes('live 199999 ')",
        )
        .await;
    eprintln!(
        "200 000 lines live: posted in {posted:?}, last on screen after {:?}; page: {}",
        started.elapsed(),
        browser.eval(report).await
    );

    // A job of 1 000 000 lines, opened afterwards.
    let (big, _) = env.create_job("alice").await;
    let started = Instant::now();
    for batch in 0..2000 {
        let lines: Vec<Value> = (0..500)
            .map(|i| json!({"text": format!("line {} of a very big job", batch * 500 + i)}))
            .collect();
        let res = env.post_json(&big, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), reqwest::StatusCode::OK);
    }
    eprintln!("1 000 000 lines posted in {:?}", started.elapsed());
    let started = Instant::now();
    browser
        .goto(&env.url(&format!("/?job={big}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the newest line",
            "return document.querySelector('.lv-log').innerText.includes('line 999999 ')",
        )
        .await;
    eprintln!(
        "1 000 000: newest lines on screen after {:?}",
        started.elapsed()
    );
    browser.eval(probe).await;
    for (what, hash, script) in [
        (
            "permalink #L500000",
            "#L500000",
            "const r = document.querySelector('.row.target'); return !!r && r.dataset.n === '500000' && !r.classList.contains('pending')",
        ),
        (
            "permalink #L1",
            "#L1",
            "const r = document.querySelector('.row.target'); return !!r && r.dataset.n === '1' && !r.classList.contains('pending')",
        ),
    ] {
        let started = Instant::now();
        browser
            .eval(&format!("location.hash = '{hash}'; return null"))
            .await;
        browser.wait_for(what, script).await;
        eprintln!("1 000 000: {what} shown after {:?}", started.elapsed());
    }
    // Dragging the scrollbar through the whole log: 20 jumps, each drawn and fetched.
    let started = Instant::now();
    for step in 1..=20 {
        browser
            .eval(&format!(
                "const l = document.querySelector('.lv-log'); l.scrollTop = l.scrollHeight * {step} / 21; return null"
            ))
            .await;
        browser
            .wait_for(
                "the rows at that place",
                "return document.querySelectorAll('.row.pending').length === 0",
            )
            .await;
    }
    eprintln!(
        "1 000 000: 20 scrollbar jumps through the log, each drawn, in {:?}; page: {}",
        started.elapsed(),
        browser.eval(report).await
    );
    browser.eval("location.hash = '#L2'; return null").await;
    browser
        .wait_for(
            "the top",
            "const r = document.querySelector('.row.target'); return !!r && r.dataset.n === '2'",
        )
        .await;
    let started = Instant::now();
    browser
        .eval(
            "const q = document.querySelector('.lv-q'); q.value = 'line 777777 '; \
             q.dispatchEvent(new Event('input')); document.querySelector('.lv-next').click(); return null",
        )
        .await;
    browser
        .wait_for(
            "the match",
            "const r = document.querySelector('.row.current'); return !!r && r.dataset.n === '777778'",
        )
        .await;
    eprintln!(
        "1 000 000: search from the top to line 777 778 in {:?}",
        started.elapsed()
    );
}

/// A frontend's page on another origin, embedding `<logstream-viewer>` from
/// `logstream dev` (module, style sheet, REST and stream, all cross-origin): what its
/// script does is in the fragment-reading `embed.js` below, five lines of which are the
/// README's example.
const EMBED_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>a frontend</title></head>
<body><h1>Build 42</h1><logstream-viewer id="log" style="height: 600px"></logstream-viewer>
<script type="module" src="/embed.js"></script></body></html>"#;
const EMBED_SCRIPT: &str = r#"
const params = new URLSearchParams(location.hash.slice(1));
history.replaceState(null, "", location.pathname);
const service = params.get("service");
const css = document.createElement("link");
css.rel = "stylesheet"; css.href = service + "/logstream-viewer.css";
document.head.append(css);
await import(service + "/logstream-viewer.js");
const viewer = document.getElementById("log");
viewer.tokenProvider = async () => params.get("token");
viewer.setAttribute("api", service);
viewer.setAttribute("stream", service);
viewer.setAttribute("job", params.get("job"));
"#;

/// Serves the embedding page on a port of its own: another origin than the service's.
async fn embedding_site() -> String {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/embed.html",
            get(|| async { ([("content-type", "text/html; charset=utf-8")], EMBED_PAGE) }),
        )
        .route(
            "/embed.js",
            get(|| async { ([("content-type", "text/javascript")], EMBED_SCRIPT) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test]
async fn a_page_on_another_origin_embeds_the_viewer_module_with_cors() {
    let site = embedding_site().await;
    let env = env_with(&[
        ("REDIS_URL", &shared_redis_url()),
        ("LOGSTREAM_CORS_ORIGINS", &site),
    ])
    .await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    env.post_lines(&job, "before", 3).await;
    let browser = Browser::start().await;
    let service = env.url("");
    let token = viewer_token("alice", 600);
    browser
        .goto(&format!(
            "{site}/embed.html#service={service}&job={job}&token={token}"
        ))
        .await;
    browser
        .wait_for(
            "the history, fetched cross-origin",
            "const l = document.querySelector('logstream-viewer .lv-log'); return !!l && l.innerText.includes('before 2')",
        )
        .await;
    env.post_lines(&job, "live", 1).await;
    browser
        .wait_for(
            "a live line over the cross-origin stream",
            "return document.querySelector('logstream-viewer .lv-log').innerText.includes('live 0')",
        )
        .await;
    env.end_with(&job, "failed", 3).await;
    browser
        .wait_for(
            "the final status",
            "return document.querySelector('logstream-viewer .lv-status').textContent.startsWith('failed (exit code 3')",
        )
        .await;
    // Its style sheet applied: the failed status in the error colour.
    assert_eq!(
        browser
            .eval("return getComputedStyle(document.querySelector('logstream-viewer .lv-status')).color")
            .await,
        json!("rgb(255, 123, 114)")
    );
    assert_eq!(
        browser.eval("return location.href").await,
        json!(format!("{site}/embed.html")),
        "no token in the address bar"
    );
}

/// Writes `docs/viewer.png`, the README's picture of the page: a build log with colours,
/// a folded group, a failed stage, times shown and a search. Run with
/// `cargo test -p logstream-cli --test it viewer_e2e::readme -- --ignored`.
#[tokio::test]
#[ignore = "writes the README's screenshot"]
async fn readme_screenshot() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    env.set_status(&job, "running").await;
    let texts = [
        "::group::Install dependencies",
        "\u{1b}[2mnpm\u{1b}[22m \u{1b}[36mci\u{1b}[39m",
        "added 412 packages, and audited 413 packages in 6s",
        "\u{1b}[32mfound 0 vulnerabilities\u{1b}[39m",
        "::endgroup::",
        "\u{1b}[0Ksection_start:1700000000:build\r\u{1b}[0K\u{1b}[36;1mBuild\u{1b}[0m",
        "\u{1b}[1m> web@1.4.0 build\u{1b}[22m",
        "\u{1b}[1m> vite build\u{1b}[22m",
        "\u{1b}[36mvite v5.4.2 \u{1b}[32mbuilding for production...\u{1b}[39m",
        "transforming (1024) src/components/LogView.tsx",
        "\u{1b}[32m✓\u{1b}[39m 1187 modules transformed.",
        "dist/assets/index-4f2a9c.js   \u{1b}[1m\u{1b}[33m512.31 kB\u{1b}[39m\u{1b}[22m │ gzip: 160.02 kB",
        "\u{1b}[32m✓ built in 4.12s\u{1b}[39m",
        "\u{1b}[0Ksection_end:1700000004:build\r\u{1b}[0K",
        "::group::Test",
        "\u{1b}[32m ✓ \u{1b}[39msrc/log.test.ts \u{1b}[2m(24 tests)\u{1b}[22m",
        "\u{1b}[31m ✗ \u{1b}[39msrc/viewer.test.ts > follows only at the bottom",
        "\u{1b}[31mAssertionError: expected 1832 to equal 0\u{1b}[39m",
        "\u{1b}[2m Test Files \u{1b}[22m \u{1b}[1m\u{1b}[31m1 failed\u{1b}[39m\u{1b}[22m | \u{1b}[1m\u{1b}[32m11 passed\u{1b}[39m\u{1b}[22m",
    ];
    for text in texts {
        let stream = if text.contains("AssertionError") {
            "stderr"
        } else {
            "stdout"
        };
        env.post_json(&job, &json!({"lines": [{"stream": stream, "text": text}]}))
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    env.http
        .post(env.url(&format!("/jobs/{job}/events")))
        .bearer_auth(INGEST_KEY)
        .json(&json!({"type": "stage", "name": "Test", "status": "failed"}))
        .send()
        .await
        .unwrap();
    env.end_with(&job, "failed", 1).await;
    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the end",
            "return document.querySelector('.lv-status').textContent.startsWith('failed')",
        )
        .await;
    browser
        .eval(
            "document.querySelector('.row.stage.foldable .t').click(); \
             document.querySelector('.lv-times').click(); \
             const q = document.querySelector('.lv-q'); q.value = 'modules'; \
             q.dispatchEvent(new Event('input')); return null",
        )
        .await;
    browser
        .wait_for("the fold", "return !!document.querySelector('.row.folded')")
        .await;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/viewer.png");
    browser.screenshot(&out).await;
}

#[tokio::test]
async fn sections_closed_out_of_order_fold_into_one_without_losing_a_row() {
    let env = env().await;
    let (job, _) = env.create_job("alice").await;
    let mut texts: Vec<String> = vec![
        "section_start:1:outer\r\u{1b}[0KOuter".into(),
        "section_start:2:inner\r\u{1b}[0KInner".into(),
        "work".into(),
        "section_end:3:outer\r\u{1b}[0K".into(),
        "section_end:4:inner\r\u{1b}[0K".into(),
    ];
    texts.extend((0..10).map(|i| format!("after {i}")));
    post_many(&env, &job, &texts, |_| false).await;

    let browser = Browser::start().await;
    let token = viewer_token("alice", 600);
    browser
        .goto(&env.url(&format!("/?job={job}#access_token={token}")))
        .await;
    browser
        .wait_for(
            "the log",
            "return document.querySelector('.lv-log').innerText.includes('after 9')",
        )
        .await;
    // Inner (entry 2) ends at 5, outer (entry 1) at 4: their ranges overlap.
    browser
        .eval("document.querySelector('.row[data-n=\"2\"] .t').click(); return null")
        .await;
    browser
        .wait_for(
            "inner folded",
            "return document.querySelector('.row[data-n=\"2\"]').nextElementSibling.dataset.n === '6'",
        )
        .await;
    browser
        .eval("document.querySelector('.row[data-n=\"1\"] .t').click(); return null")
        .await;
    browser
        .wait_for(
            "outer folded over both",
            "return document.querySelector('.row[data-n=\"1\"]').nextElementSibling.dataset.n === '6'",
        )
        .await;
    assert_eq!(
        rows(&browser).await,
        [1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        "every row not folded is shown, once"
    );
    browser
        .eval("document.querySelector('.row[data-n=\"1\"] .t').click(); return null")
        .await;
    browser
        .wait_for(
            "unfolded",
            "return document.querySelectorAll('.lv-rows .row').length === 15",
        )
        .await;
    assert_eq!(rows(&browser).await, (1..=15).collect::<Vec<u64>>());
}
