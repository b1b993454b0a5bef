//! Where `desa bench` sends its queries: a `desa serve` child over
//! loopback HTTP, or the engine opened in the bench's own process.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use desa_engine::{Engine, EngineConfig, SystemClock};
use desa_model::{GeoBox, TimeWindow};

use crate::client::Client;

pub(super) struct ChildNode {
    pub child: Child,
    pub base: String,
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_node(data_dir: &std::path::Path, extra: &[String]) -> Result<ChildNode> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("DESA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting desa serve")?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let base = line
        .strip_prefix("desa listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from desa serve: {line:?}"))?
        .to_owned();
    Ok(ChildNode { child, base })
}

/// Where the timed queries go.
pub(super) enum Target {
    /// A `desa serve` child, asked over loopback HTTP: what users get.
    Node { node: ChildNode, client: Client },
    /// The engine opened in this process, asked directly.
    InProcess(Engine),
}

impl Target {
    /// The answer `GET path?params` gives, as JSON.
    pub fn ask(&self, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
        match self {
            Target::Node { client, .. } => client.get_json(path, params),
            Target::InProcess(engine) => ask_engine(engine, path, params),
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Target::Node { node, .. } => node.child.id(),
            Target::InProcess(_) => std::process::id(),
        }
    }
}

/// Answers one of the bench's queries on an engine, as the HTTP API would.
fn ask_engine(engine: &Engine, path: &str, params: &[(&str, String)]) -> Result<serde_json::Value> {
    let get = |name: &str| -> Result<&str> {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| anyhow!("{path}: no parameter {name}"))
    };
    let num = |name: &str| -> Result<f64> { Ok(get(name)?.parse()?) };
    if path == "/v1/types" {
        return Ok(serde_json::to_value(engine.types()?)?);
    }
    let w = TimeWindow::new(get("start")?.parse()?, get("end")?.parse()?)?;
    let ty = get("type")?;
    Ok(match path {
        "/v1/query/avg" => serde_json::to_value(engine.avg(get("device_id")?, ty, w)?)?,
        "/v1/query/topk" => serde_json::to_value(engine.topk(ty, w, get("k")?.parse()?)?)?,
        "/v1/query/geo" => {
            let bbox = GeoBox::new(
                num("min_lat")?,
                num("max_lat")?,
                num("min_lon")?,
                num("max_lon")?,
            )
            .map_err(|e| anyhow!("{path}: {e}"))?;
            serde_json::to_value(engine.geo(ty, &bbox, w)?)?
        }
        "/v1/query/series" => {
            let answer =
                desa_store::Store::series(engine, get("device_id")?, ty, w, get("step")?.parse()?)?;
            serde_json::to_value(answer?)?
        }
        other => bail!("no in-process query for {other}"),
    })
}

/// (VmRSS, VmHWM) of a process, in bytes.
pub(super) fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Opens the stored engine in this process: (target, events stored, no load time).
pub(super) fn open_in_process(data_dir: &Path) -> Result<(Target, u64, Duration)> {
    let engine = Engine::open(EngineConfig::new(data_dir), Arc::new(SystemClock))
        .with_context(|| format!("opening the data dir {}", data_dir.display()))?;
    let st = engine.stats();
    let stored = st.head_rows + st.frozen_rows + st.segment_rows;
    eprintln!(
        "reusing {stored} events stored in {}, queried in this process",
        data_dir.display()
    );
    Ok((Target::InProcess(engine), stored, Duration::ZERO))
}
