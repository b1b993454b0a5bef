//! Headless Chromium driven over the DevTools protocol, for the console's
//! tests: `--remote-debugging-pipe` (JSON messages ended by NUL on fds 3 and
//! 4, so no WebSocket client is needed), one page, real mouse events.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The browser: `DESA_CHROMIUM`, else `chromium` on the PATH (the test
/// command installs it).
pub fn chromium() -> String {
    let name = std::env::var("DESA_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = Command::new(&name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "no browser: install Debian's chromium (scripts/test.sh does) or set DESA_CHROMIUM"
    );
    name
}

/// The flags every headless run of the tests uses.
pub fn headless_args(profile: &std::path::Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--hide-scrollbars".into(),
        "--window-size=1280,1100".into(),
        format!("--user-data-dir={}", profile.display()),
    ]
}

/// One page in a headless browser that the test steers.
pub struct Page {
    child: Child,
    to_browser: File,
    from_browser: BufReader<File>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Page {
    /// Starts the browser and opens `url` in a new page.
    pub fn open(url: &str) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (resp_read, resp_write) = pipe();
        let mut command = Command::new(chromium());
        command
            .args(headless_args(profile.path()))
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls
        // (fcntl, dup2) put the pipe ends on fds 3 and 4, where Chromium
        // reads commands and writes replies. They go through fds above 10
        // first so that neither lands on the other's target.
        unsafe {
            command.pre_exec(move || {
                let high_cmd = libc::fcntl(cmd_read, libc::F_DUPFD, 10);
                let high_resp = libc::fcntl(resp_write, libc::F_DUPFD, 10);
                if high_cmd < 0
                    || high_resp < 0
                    || libc::dup2(high_cmd, 3) < 0
                    || libc::dup2(high_resp, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // SAFETY: the parent owns these ends alone; the child's copies were
        // closed at exec (O_CLOEXEC) after being duplicated onto 3 and 4.
        let (to_browser, from_browser) = unsafe {
            libc::close(cmd_read);
            libc::close(resp_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(resp_read))
        };
        let mut page = Page {
            child,
            to_browser,
            from_browser: BufReader::new(from_browser),
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = page.call("Target.createTarget", json!({ "url": url }))["targetId"].clone();
        let attached = page.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page
    }

    /// Sends one command (to the page once attached) and waits for its
    /// reply, skipping the events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        loop {
            let mut reply = Vec::new();
            let n = self.from_browser.read_until(0, &mut reply).unwrap();
            assert!(n > 0, "the browser closed its pipe during {method}");
            reply.pop();
            let reply: Value = serde_json::from_slice(&reply).unwrap();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression (awaited if a promise).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true, for at most 20 s.
    pub fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.eval(expression) != json!(true) {
            assert!(Instant::now() < deadline, "never true: {expression}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the console has loaded and no API request is in flight
    /// (while a navigation replaces the document it has no body yet).
    pub fn settle(&mut self) {
        self.wait_for(
            "document.body !== null && document.body.dataset.ready === 'true' \
             && document.body.dataset.pending === '0'",
        );
    }

    /// The centre of the element `selector` selects, in page pixels.
    pub fn centre_of(&mut self, selector: &str) -> (f64, f64) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
            json!(selector)
        ));
        (r[0].as_f64().unwrap(), r[1].as_f64().unwrap())
    }

    fn mouse(&mut self, kind: &str, (x, y): (f64, f64)) {
        let button = if kind == "mouseMoved" { "none" } else { "left" };
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": button, "buttons": 1, "clickCount": 1 }),
        );
    }

    /// A left click at the centre of `selector`.
    pub fn click(&mut self, selector: &str) {
        let at = self.centre_of(selector);
        self.mouse("mousePressed", at);
        self.mouse("mouseReleased", at);
    }

    /// A drag with the left button from `from` to `to` (page pixels).
    pub fn drag(&mut self, from: (f64, f64), to: (f64, f64)) {
        self.mouse("mousePressed", from);
        for step in 1..=5 {
            let f = step as f64 / 5.0;
            self.mouse(
                "mouseMoved",
                (from.0 + (to.0 - from.0) * f, from.1 + (to.1 - from.1) * f),
            );
        }
        self.mouse("mouseReleased", to);
    }

    /// Types `text` into the focused element.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
