//! `desa demo`: a newcomer's first five minutes with desa.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use desa_gen::{GenConfig, Generator};

use crate::client::Client;
use crate::gen::{post_lines, progress_bar};
use crate::serve::ServeArgs;
use crate::serve::{runtime, shutdown_signal, Node};

#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Events to feed (valid ones; a few duplicates and late events come on top).
    #[arg(long, env = "DESA_DEMO_EVENTS", default_value_t = 3_000_000)]
    pub events: u64,
    /// Devices in the stream.
    #[arg(long, env = "DESA_DEMO_DEVICES", default_value_t = 20_000)]
    pub devices: u64,
    /// Address of the demo node's HTTP API.
    #[arg(long, env = "DESA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Data dir (default: a new temporary directory, removed on exit).
    #[arg(long, env = "DESA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Load, query and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

const DAY: i64 = 86_400;

pub fn run(args: DemoArgs) -> Result<()> {
    if std::env::var_os("DESA_LOG").is_none() {
        std::env::set_var("DESA_LOG", "warn");
    }
    crate::serve::init_logging();
    let tmp = tempfile::Builder::new().prefix("desa-demo-").tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let rt = runtime()?;
    // The node's own defaults, as `desa serve` has them (one place).
    let serve = ServeArgs::defaults(&data_dir, &args.listen)?;
    let node = rt.block_on(Node::start(&serve))?;
    let base = format!("http://{}", node.addr);
    println!(
        "desa node listening on {base} (data dir {})",
        data_dir.display()
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let start = now - 7 * DAY;
    let cfg = GenConfig {
        devices: args.devices,
        count: args.events,
        start_ts: start,
        span_secs: 7 * DAY,
        types: 4,
        ..GenConfig::default()
    };
    let hottest = Generator::new(cfg.clone()).device_id(0);
    println!(
        "feeding {} events from {} devices (Zipf-skewed, 4 sensor types, cities on 6 continents, 5% out of order, 1% up to 3 days late)",
        args.events, args.devices
    );
    let client = Client::new(&base);
    let bar = progress_bar(args.events, "ingest");
    let s = post_lines(
        &client,
        Generator::new(cfg).map(|g| g.line),
        5_000,
        4,
        0,
        &bar,
    )?;
    bar.finish_and_clear();
    println!(
        "ingested {} events in {:.1}s: {:.0} events/s, each acknowledged only once fsynced\n",
        s.accepted,
        s.elapsed.as_secs_f64(),
        s.accepted as f64 / s.elapsed.as_secs_f64().max(1e-9)
    );

    type Params = Vec<(&'static str, String)>;
    let queries: Vec<(&str, &str, Params)> = vec![
        (
            "average temperature of the busiest device over the last 24 hours",
            "/v1/query/avg",
            vec![
                ("device_id", hottest.clone()),
                ("type", "temperature".into()),
                ("start", (now - DAY).to_string()),
                ("end", now.to_string()),
            ],
        ),
        (
            "top 10 devices by temperature events over the last 24 hours",
            "/v1/query/topk",
            vec![
                ("type", "temperature".into()),
                ("start", (now - DAY).to_string()),
                ("end", now.to_string()),
                ("k", "10".into()),
            ],
        ),
        (
            "average temperature in Europe (35..71N, 11W..40E) over the last 7 days",
            "/v1/query/geo",
            vec![
                ("type", "temperature".into()),
                ("min_lat", "35".into()),
                ("max_lat", "71".into()),
                ("min_lon", "-11".into()),
                ("max_lon", "40".into()),
                ("start", (now - 7 * DAY).to_string()),
                ("end", (now + 1).to_string()),
            ],
        ),
    ];
    for (title, path, params) in &queries {
        let answer = client.get_json(path, params)?;
        let mut lat: Vec<Duration> = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            client.get_json(path, params)?;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!("== {title}");
        print!("{}", crate::query::table(&answer));
        println!(
            "   latency over HTTP: p50 {:.2} ms, p99 {:.2} ms (50 runs)\n",
            lat[lat.len() / 2].as_secs_f64() * 1e3,
            lat[lat.len() * 99 / 100].as_secs_f64() * 1e3
        );
    }
    let q = |path: &str, params: &[(&str, String)]| {
        let qs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("curl '{base}{path}?{}'", qs.join("&"))
    };
    println!(
        "Open the console: {base}/?type=temperature&start={}&end={now}&k=10&device={hottest}&bbox=35,-11,71,40\n",
        now - DAY
    );
    println!("Try it yourself:");
    for (_, path, params) in &queries {
        println!("  {}", q(path, params));
    }
    println!("  curl {base}/metrics");
    println!(
        "  curl -X POST {base}/v1/events -H 'Content-Type: application/x-ndjson' --data-binary \
         '{{\"device_id\":\"my-sensor\",\"timestamp\":{now},\"type\":\"temperature\",\"value\":21.5,\"location\":{{\"latitude\":48.85,\"longitude\":2.35}}}}'"
    );
    if !args.no_wait {
        println!("\nserving until Ctrl-C");
        rt.block_on(shutdown_signal());
    }
    rt.block_on(node.stop())?;
    drop(tmp);
    Ok(())
}
