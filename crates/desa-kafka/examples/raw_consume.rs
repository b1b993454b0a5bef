//! The baseline for `desa bench --kafka-brokers`: how fast a bare librdkafka
//! consumer (no parsing, no storage) drains a topic from the same broker.
//!
//! `cargo run --release -p desa-kafka --example raw_consume -- BROKERS TOPIC COUNT`

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&args[1], &args[2]);
    let count: u64 = args[3].parse()?;
    let group = format!("raw-consume-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut n = 0u64;
    let mut started = None;
    while n < count {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            started.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "raw librdkafka consumer: {n} messages in {secs:.1}s = {:.0} msgs/s",
        n as f64 / secs
    );
    Ok(())
}
