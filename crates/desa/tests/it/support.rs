//! `TestServer`: a real `desa serve` process on a free port, with its own data dir.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    /// Environment of the process, beyond `DESA_LOG` (kept across restarts).
    pub env: Vec<(String, String)>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn to_reply(r: Result<ureq::Response, ureq::Error>) -> Result<Reply, String> {
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    let text = resp.into_string().map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl TestServer {
    /// Starts a node on a new temporary data dir.
    pub fn start(extra: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut s = TestServer::start_in(&data_dir, extra).unwrap();
        s._tmp = Some(tmp);
        s
    }

    /// A node some other process started and owns (a worker of `desa
    /// autoscale`), reached at `base`; dropping this leaves it running.
    pub fn attach(base: &str) -> TestServer {
        TestServer {
            child: None,
            base: base.to_owned(),
            data_dir: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            log: PathBuf::new(),
            _tmp: None,
        }
    }

    /// Starts a node on `data_dir`; `Err` holds its log when it exits instead.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Result<TestServer, String> {
        TestServer::start_with_env(data_dir, extra, &[])
    }

    /// As [`start_in`](Self::start_in), with more environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Result<TestServer, String> {
        let mut s = TestServer {
            child: None,
            base: String::new(),
            data_dir: data_dir.to_owned(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log: data_dir.with_extension("log"),
            _tmp: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_desa"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("DESA_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        match line.strip_prefix("desa listening on ") {
            Some(base) => {
                self.base = base.to_owned();
                self.child = Some(child);
                Ok(())
            }
            None => {
                let _ = child.wait();
                Err(self.log_text())
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// SIGTERM: a graceful shutdown.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM; the process's exit code (`None`: killed by a signal) and
    /// whether its log holds a panic.
    pub fn terminate_status(&mut self) -> (Option<i32>, bool) {
        let Some(mut c) = self.child.take() else {
            return (None, false);
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let code = c.wait().unwrap().code();
        (code, self.log_text().contains("panicked"))
    }

    /// SIGTERM, then waits up to `limit` for the process to exit; a process
    /// still running then is killed and `false` returned.
    pub fn terminate_within(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if c.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        false
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn()
            .unwrap_or_else(|log| panic!("restart failed:\n{log}"));
    }

    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.spawn()
    }

    pub fn post(
        &self,
        body: &[u8],
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = agent().post(&format!("{}/v1/events", self.base));
        if !content_type.is_empty() {
            req = req.set("Content-Type", content_type);
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        to_reply(req.send_bytes(body))
    }

    pub fn post_ndjson(&self, body: &str) -> Reply {
        self.post(body.as_bytes(), "application/x-ndjson", &[])
            .unwrap()
    }

    pub fn get(&self, path: &str, params: &[(&str, String)]) -> Reply {
        let mut req = agent().get(&format!("{}{path}", self.base));
        for (k, v) in params {
            req = req.query(k, v);
        }
        to_reply(req.call()).unwrap()
    }

    pub fn get_text(&self, path: &str) -> String {
        agent()
            .get(&format!("{}{path}", self.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Waits until every stored event is in segments.
    pub fn wait_flushed(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/healthz", &[]).body["unflushed_events"] != 0 {
            assert!(Instant::now() < deadline, "head not flushed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn window(start: i64, end: i64) -> Vec<(&'static str, String)> {
    vec![("start", start.to_string()), ("end", end.to_string())]
}

/// Polls every server's avg query until it counts one event of `device`
/// (type `t`) at 1767225600, failing if that takes 2 seconds from `since`.
pub fn wait_answered(servers: &[&TestServer], device: &str, since: Instant) {
    let mut p = window(1_767_225_600, 1_767_225_601);
    p.extend([("device_id", device.to_string()), ("type", "t".into())]);
    while servers
        .iter()
        .any(|s| s.get("/v1/query/avg", &p).body["count"] != 1)
    {
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "not visible within 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts of every device of a type over all time, via top-K with a large K.
pub fn all_counts(s: &TestServer, ty: &str) -> std::collections::HashMap<String, u64> {
    let mut p = window(0, 4_000_000_000);
    p.push(("type", ty.to_owned()));
    p.push(("k", "10000".into()));
    let r = s.get("/v1/query/topk", &p);
    assert_eq!(r.status, 200, "{}", r.body);
    devices_of(&r.body).into_iter().collect()
}

/// The `devices` of a top-K answer as (device_id, count) pairs, in order.
pub fn devices_of(answer: &serde_json::Value) -> Vec<(String, u64)> {
    answer["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_owned(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Builds the fault-injection shim (`faults.c`) into `dir` and returns the
/// environment that preloads it, counting and failing the calls of `ops`
/// on files under `data_dir` while the file `trigger` exists, from the
/// `nth` counted call on (0: never), logging each counted call to `log`.
pub fn fault_env(
    dir: &Path,
    data_dir: &Path,
    ops: &str,
    trigger: &Path,
    nth: u64,
    log: &Path,
) -> Vec<(&'static str, String)> {
    let shim = dir.join("libfaults.so");
    if !shim.exists() {
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&shim)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/faults.c"))
            .arg("-ldl")
            .status()
            .unwrap();
        assert!(built.success(), "cannot build the fault shim with cc");
    }
    vec![
        ("LD_PRELOAD", shim.display().to_string()),
        ("DESA_FAULT_OPS", ops.to_owned()),
        ("DESA_FAULT_PATH", data_dir.display().to_string()),
        ("DESA_FAULT_IF", trigger.display().to_string()),
        ("DESA_FAULT_NTH", nth.to_string()),
        ("DESA_FAULT_LOG", log.display().to_string()),
    ]
}

/// `bytes` as one gzip member.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}
