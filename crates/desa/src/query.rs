//! `desa query`: ask a node and print the answer as a table or JSON.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::Client;

#[derive(Args, Clone, Debug)]
pub struct QueryArgs {
    /// The node to ask.
    #[arg(
        long,
        env = "DESA_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Print the JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token for a node with --auth-file (`desa token new`).
    #[arg(long, env = "DESA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CAs to trust for an `https://` node (default: the
    /// well-known public CAs).
    #[arg(long, env = "DESA_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub kind: QueryKind,
}

/// What every query names: a type and a window.
#[derive(clap::Args, Clone, Debug)]
pub struct TypeAndWindow {
    #[arg(long = "type")]
    event_type: String,
    #[arg(long)]
    start: i64,
    #[arg(long)]
    end: i64,
}

impl TypeAndWindow {
    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("type", self.event_type.clone()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
        ]
    }
}

#[derive(Subcommand, Clone, Debug)]
pub enum QueryKind {
    /// Average value of one device and type in [start, end).
    Avg {
        #[arg(long)]
        device_id: String,
        #[command(flatten)]
        on: TypeAndWindow,
    },
    /// The K devices with the most events of a type in [start, end).
    Topk {
        #[command(flatten)]
        on: TypeAndWindow,
        #[arg(long, default_value_t = 10)]
        k: u32,
    },
    /// Average value of a type inside a lat/lon box in [start, end).
    Geo {
        #[command(flatten)]
        on: TypeAndWindow,
        #[arg(long, allow_hyphen_values = true)]
        min_lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        max_lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        min_lon: f64,
        #[arg(long, allow_hyphen_values = true)]
        max_lon: f64,
    },
}

pub fn run(args: QueryArgs) -> Result<()> {
    let client = Client::new(&args.url)
        .with_token(args.token.clone())
        .with_cacert(args.cacert.as_deref())?;
    let (path, mut params, more): (&str, _, Vec<(&str, String)>) = match &args.kind {
        QueryKind::Avg { device_id, on } => (
            "/v1/query/avg",
            on.params(),
            vec![("device_id", device_id.clone())],
        ),
        QueryKind::Topk { on, k } => ("/v1/query/topk", on.params(), vec![("k", k.to_string())]),
        QueryKind::Geo {
            on,
            min_lat,
            max_lat,
            min_lon,
            max_lon,
        } => (
            "/v1/query/geo",
            on.params(),
            vec![
                ("min_lat", min_lat.to_string()),
                ("max_lat", max_lat.to_string()),
                ("min_lon", min_lon.to_string()),
                ("max_lon", max_lon.to_string()),
            ],
        ),
    };
    params.extend(more);
    let answer = client.get_json(path, &params)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", table(&answer));
    }
    Ok(())
}

/// A plain-text rendering of an answer.
pub fn table(answer: &Value) -> String {
    let mut out = String::new();
    if let Some(devices) = answer.get("devices").and_then(Value::as_array) {
        out.push_str(&format!(
            "top {} devices for type {} in [{}, {}):\n",
            answer["k"], answer["type"], answer["start"], answer["end"]
        ));
        out.push_str(&format!(
            "{:>5}  {:<32} {:>12}\n",
            "rank", "device_id", "count"
        ));
        for (i, d) in devices.iter().enumerate() {
            out.push_str(&format!(
                "{:>5}  {:<32} {:>12}\n",
                i + 1,
                d["device_id"].as_str().unwrap_or(""),
                d["count"].as_u64().unwrap_or(0)
            ));
        }
        return out;
    }
    if let Some(obj) = answer.as_object() {
        for (k, v) in obj {
            out.push_str(&format!("{k:>10}  {v}\n"));
        }
    }
    out
}
