//! The web console in a real browser: Debian's `chromium`, headless, opens
//! `/?type=..&start=..&end=..&k=..&device=..&bbox=..` on a node with known
//! events; the rendered DOM must hold the oracle's top-K in order, the
//! device's series with the right number of points and totals, and the box's
//! count and average, for a plain box and one across the antimeridian. API
//! errors show in the page; with an auth file the page asks for a token. A
//! screenshot is left under the target dir as the test's artifact.

use std::path::{Path, PathBuf};
use std::process::Command;

use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{GeoBox, TimeWindow};

use crate::support::TestServer;

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;
/// The console asks for at most this many points per chart (console.js).
const MAX_CHART_POINTS: i64 = 200;

/// The browser: `DESA_CHROMIUM`, else `chromium` on the PATH (the test
/// command installs it).
fn chromium() -> String {
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

/// Runs headless chromium on `url` with `what` (`--dump-dom` or
/// `--screenshot=PATH`), letting the page's requests finish first.
fn browse(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(what)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    if what == "--dump-dom" {
        assert!(
            dom.contains("data-ready=\"true\""),
            "page never ready: {dom}"
        );
    }
    dom
}

/// The value of attribute `attr` on the element with `id`.
fn attr_of_id<'a>(dom: &'a str, id: &str, attr: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let from = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(&tag[from..from + tag[from..].find('"')?])
}

/// Text of the element with `id` (no nested tags).
fn text_of_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let from = at + dom[at..].find('>').unwrap() + 1;
    &dom[from..from + dom[from..].find('<').unwrap()]
}

/// The top-K table's rows: `data-device` and `data-count` of each, in order.
fn table_rows(dom: &str) -> Vec<(String, u64)> {
    dom.split("<tr data-device=\"")
        .skip(1)
        .map(|row| {
            let device = &row[..row.find('"').unwrap()];
            let count = &row[row.find("data-count=\"").unwrap() + 12..];
            let count = count[..count.find('"').unwrap()].parse().unwrap();
            (device.to_owned(), count)
        })
        .collect()
}

fn load(s: &TestServer) -> Oracle {
    let mut oracle = Oracle::default();
    let lines: Vec<_> = Generator::new(GenConfig {
        seed: 21,
        devices: 40,
        count: 6_000,
        start_ts: T0,
        span_secs: 2 * DAY,
        late_fraction: 0.05,
        ..GenConfig::default()
    })
    .filter_map(|g| g.event.map(|e| (g.line, e)))
    .collect();
    for chunk in lines.chunks(1_000) {
        let body: String = chunk.iter().map(|(l, _)| l.clone() + "\n").collect();
        let r = s.post_ndjson(&body);
        assert_eq!(r.status, 200, "{}", r.body);
        for (_, e) in chunk {
            oracle.add(e.clone());
        }
    }
    oracle
}

fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One console view: a type, a window, K, a device and a box.
pub struct View<'a> {
    pub event_type: &'a str,
    pub window: TimeWindow,
    pub k: usize,
    pub device: &'a str,
    pub bbox: GeoBox,
}

impl View<'_> {
    fn url(&self, base: &str) -> String {
        let (w, b) = (self.window, &self.bbox);
        format!(
            "{base}/?type={}&start={}&end={}&k={}&device={}&bbox={},{},{},{}",
            self.event_type,
            w.start,
            w.end,
            self.k,
            self.device,
            b.min_lat,
            b.min_lon,
            b.max_lat,
            b.max_lon
        )
    }
}

/// Opens `view` on the node at `base` in the browser and checks the table,
/// the chart and the box against the oracle; returns the DOM.
pub fn check_view(base: &str, oracle: &Oracle, view: &View) -> String {
    let (ty, w) = (view.event_type, view.window);
    let dom = browse(&view.url(base), "--dump-dom");
    let want: Vec<(String, u64)> = oracle
        .topk(ty, w, view.k)
        .devices
        .iter()
        .map(|d| (d.device_id.clone(), d.count))
        .collect();
    assert_eq!(table_rows(&dom), want, "top-K table");

    let step = (w.end - w.start + MAX_CHART_POINTS - 1) / MAX_CHART_POINTS;
    let series = oracle.series(view.device, ty, w, step);
    assert_eq!(
        attr_of_id(&dom, "series", "data-points"),
        Some(series.points.len().to_string().as_str()),
        "points in the device chart"
    );
    assert_eq!(
        attr_of_id(&dom, "series-summary", "data-count"),
        Some(series.count.to_string().as_str())
    );
    let shown: f64 = attr_of_id(&dom, "series-summary", "data-avg")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        close(shown, series.avg.unwrap(), 1e-9),
        "series avg {shown}"
    );

    let geo = oracle.geo(ty, &view.bbox, w);
    assert!(geo.count > 0, "a box with events: {:?}", view.bbox);
    assert_eq!(
        attr_of_id(&dom, "geo-count", "data-count"),
        Some(geo.count.to_string().as_str()),
        "geo count {:?}",
        view.bbox
    );
    let shown: f64 = attr_of_id(&dom, "geo-avg", "data-avg")
        .unwrap()
        .parse()
        .unwrap();
    assert!(close(shown, geo.avg.unwrap(), 1e-9), "geo avg {shown}");
    for panel in ["topk", "series", "geo"] {
        let latency = text_of_id(&dom, &format!("{panel}-latency"));
        assert!(
            latency.ends_with(" ms"),
            "{panel} latency shown: {latency:?}"
        );
    }
    dom
}

#[test]
fn the_console_shows_the_oracles_answers_for_the_view_its_url_names() {
    let s = TestServer::start(&[]);
    let oracle = load(&s);
    let w = TimeWindow::new(T0 + 3_600, T0 + 2 * DAY - 7).unwrap();
    let device = oracle.topk("temperature", w, 5).devices[1]
        .device_id
        .clone();
    let mut view = View {
        event_type: "temperature",
        window: w,
        k: 5,
        device: &device,
        bbox: GeoBox::new(35.0, 71.0, -11.0, 40.0).unwrap(),
    };
    let dom = check_view(&s.base, &oracle, &view);
    assert_eq!(attr_of_id(&dom, "map", "data-centre"), Some("0"));
    let shot = artifact_dir().join("console.png");
    browse(
        &view.url(&s.base),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("screenshot: {}", shot.display());

    // A box across the antimeridian: min_lon 100 > max_lon -60 spans Asia,
    // Oceania and the Americas.
    view.bbox = GeoBox::new(-60.0, 70.0, 100.0, -60.0).unwrap();
    view.k = 20;
    let dom = check_view(&s.base, &oracle, &view);
    assert_eq!(
        attr_of_id(&dom, "map", "data-centre"),
        Some("180"),
        "a box across the antimeridian is shown on a map centred on it"
    );
    let shot = artifact_dir().join("console-antimeridian.png");
    browse(
        &view.url(&s.base),
        &format!("--screenshot={}", shot.display()),
    );
}

#[test]
fn api_errors_and_a_wanted_token_show_in_the_page() {
    let s = TestServer::start(&[]);
    load(&s);
    // end before start: every panel says why instead of going blank.
    let dom = browse(
        &format!(
            "{}/?type=temperature&start={}&end={}&device=x&bbox=1,2,3,4",
            s.base,
            T0 + DAY,
            T0
        ),
        "--dump-dom",
    );
    for panel in ["topk-error", "series-error", "geo-error"] {
        let text = text_of_id(&dom, panel);
        assert!(text.contains("start"), "{panel} names the field: {text:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    let (_, line) = crate::auth::new_token("viewer", "query");
    std::fs::write(&file, line + "\n").unwrap();
    let s = TestServer::start(&["--auth-file", file.to_str().unwrap()]);
    let dom = browse(&format!("{}/", s.base), "--dump-dom");
    let login = &dom[dom.find("<form id=\"login\"").unwrap()..];
    let login = &login[..login.find('>').unwrap()];
    assert!(
        !login.contains("hidden"),
        "the token form is shown: {login}"
    );
    assert!(
        text_of_id(&dom, "login-error").contains("Bearer"),
        "the node's reason is shown"
    );
}
