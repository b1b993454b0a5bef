//! Parsing throughput of an ingest body: 4 MiB of NDJSON events shaped like
//! `desa gen`'s (5% with metadata), decoded and validated.
//!
//! ```sh
//! cargo bench -p desa-model --bench parse
//! ```
//!
//! `scanner` is the usual case: the byte scanner decodes every event.
//! `serde` is the same events with an escape in each device id (`\u002d`
//! for `-`), which the scanner leaves to the typed serde decode: the cost of
//! the path every event took before the scanner.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use desa_model::{parse_body, BodyFormat, Limits};

/// About 4 MiB of events; `dash` is how the device id spells its dash.
fn body(dash: &str) -> (Vec<u8>, u64) {
    let mut out = String::new();
    let mut n = 0u64;
    let mut x: u64 = 7;
    while out.len() < 4 << 20 {
        // A small xorshift: varied digits, no dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let device = x % 1_000_000;
        let lat = (x % 170_000) as f64 / 1000.0 - 85.0 + 1.0 / 3.0;
        let lon = ((x >> 20) % 350_000) as f64 / 1000.0 - 175.0 + 1.0 / 7.0;
        let value = ((x >> 40) % 100_000) as f64 / 1000.0;
        let ty = ["temperature", "humidity", "co2", "pressure"][(x % 4) as usize];
        out.push_str(&format!(
            r#"{{"device_id":"dev{dash}{device:07}","timestamp":{},"type":"{ty}","value":{value},"location":{{"latitude":{lat},"longitude":{lon}}}"#,
            1_767_225_600 + n % 2_592_000
        ));
        if n.is_multiple_of(20) {
            out.push_str(r#","metadata":{"fw":"1.0.1","battery":0.09}"#);
        }
        out.push_str("}\n");
        n += 1;
    }
    (out.into_bytes(), n)
}

fn parse(c: &mut Criterion) {
    let limits = Limits::at(1_800_000_000);
    let mut group = c.benchmark_group("parse_body");
    for (name, dash) in [("scanner", "-"), ("serde", "\\u002d")] {
        let (bytes, events) = body(dash);
        group.throughput(Throughput::Elements(events));
        group.bench_function(name, |b| {
            b.iter(|| {
                let parsed = parse_body(&bytes, BodyFormat::Ndjson, &limits).unwrap();
                assert_eq!(parsed.events.len() as u64, events);
                parsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
