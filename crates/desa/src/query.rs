//! `desa query`: ask a node and print the answer as a table or JSON.

use anyhow::Result;
use serde_json::Value;

use crate::cli::{QueryArgs, QueryKind};
use crate::client::Client;

pub fn run(args: QueryArgs) -> Result<()> {
    let client = Client::new(&args.url);
    let (path, params): (&str, Vec<(&str, String)>) = match &args.kind {
        QueryKind::Avg {
            device_id,
            event_type,
            start,
            end,
        } => (
            "/v1/query/avg",
            vec![
                ("device_id", device_id.clone()),
                ("type", event_type.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
            ],
        ),
        QueryKind::Topk {
            event_type,
            start,
            end,
            k,
        } => (
            "/v1/query/topk",
            vec![
                ("type", event_type.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("k", k.to_string()),
            ],
        ),
        QueryKind::Geo {
            event_type,
            min_lat,
            max_lat,
            min_lon,
            max_lon,
            start,
            end,
        } => (
            "/v1/query/geo",
            vec![
                ("type", event_type.clone()),
                ("min_lat", min_lat.to_string()),
                ("max_lat", max_lat.to_string()),
                ("min_lon", min_lon.to_string()),
                ("max_lon", max_lon.to_string()),
                ("start", start.to_string()),
                ("end", end.to_string()),
            ],
        ),
    };
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
