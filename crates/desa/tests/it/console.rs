//! The web console in a real browser: Debian's `chromium`, headless, opens
//! `/?type=..&start=..&end=..&k=..&device=..&bbox=..` on a node with known
//! events; the rendered DOM must hold the oracle's top-K in order, the
//! device's series with the right number of points and totals, and the box's
//! count and average, for a plain box and one across the antimeridian. Real
//! mouse events (over the DevTools protocol, `browser.rs`) pick a device and
//! drag boxes; API errors show in the page; with an auth file the page asks
//! for a token. Screenshots are left under the target dir as artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;

use desa_gen::{GenConfig, Generator};
use desa_model::oracle::{close, Oracle};
use desa_model::{GeoBox, TimeWindow};

use crate::browser::{chromium, headless_args, Page};
use crate::support::TestServer;

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;
/// The console asks for at most this many points per chart (console.js).
const MAX_CHART_POINTS: i64 = 200;

/// Runs headless chromium on `url` with `what` (`--dump-dom` or
/// `--screenshot=PATH`), letting the page's requests finish first.
fn browse(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(headless_args(profile.path()))
        .arg("--virtual-time-budget=20000")
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
    load_with(s, None)
}

/// Posts the test's events, with a bearer token if given.
fn load_with(s: &TestServer, token: Option<&str>) -> Oracle {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
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
        let r = s
            .post(body.as_bytes(), "application/x-ndjson", &headers)
            .unwrap();
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
fn api_errors_show_in_every_panel() {
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
}

/// The page's `#id` element's `data-NAME`, in the live page.
fn data_of(page: &mut Page, id: &str, name: &str) -> String {
    page.eval(&format!("document.getElementById('{id}').dataset.{name}"))
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The box in the page's box field, as the API reads it.
fn shown_box(page: &mut Page) -> GeoBox {
    let text = page.eval("document.getElementById('bbox').value");
    let v: Vec<f64> = text
        .as_str()
        .unwrap()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    GeoBox::new(v[0], v[2], v[1], v[3]).unwrap()
}

/// The box's count and average in the live page against the oracle.
fn check_geo(page: &mut Page, oracle: &Oracle, ty: &str, w: TimeWindow) -> GeoBox {
    let b = shown_box(page);
    let want = oracle.geo(ty, &b, w);
    assert!(want.count > 0, "a box with events: {b:?}");
    assert_eq!(data_of(page, "geo-count", "count"), want.count.to_string());
    let shown: f64 = data_of(page, "geo-avg", "avg").parse().unwrap();
    assert!(close(shown, want.avg.unwrap(), 1e-9), "geo avg {shown}");
    b
}

/// Clicks and drags with real mouse events: a device picked in the table
/// gets its chart, a box dragged on the map its answer, one dragged across
/// the middle of the Pacific-centred map crosses the antimeridian, and the
/// page's own link restores the view.
#[test]
fn a_click_and_drags_in_the_page_give_the_oracles_answers() {
    let s = TestServer::start(&[]);
    let oracle = load(&s);
    let (ty, w) = (
        "humidity",
        TimeWindow::new(T0 + 600, T0 + 2 * DAY - 1).unwrap(),
    );
    let mut page = Page::open(&format!(
        "{}/?type={ty}&start={}&end={}&k=5",
        s.base, w.start, w.end
    ));
    page.settle();
    let top = oracle.topk(ty, w, 5);
    page.click("#topk tbody tr:nth-child(3)");
    page.settle();
    let device = &top.devices[2].device_id;
    assert_eq!(
        page.eval("new URLSearchParams(location.search).get('device')"),
        serde_json::json!(device),
        "the clicked device is in the URL"
    );
    let step = (w.end - w.start + MAX_CHART_POINTS - 1) / MAX_CHART_POINTS;
    let series = oracle.series(device, ty, w, step);
    assert_eq!(
        data_of(&mut page, "series", "points"),
        series.points.len().to_string()
    );
    assert_eq!(
        data_of(&mut page, "series-summary", "count"),
        series.count.to_string()
    );

    // The map's pixel of a latitude and longitude, centred on `centre`.
    let rect = page.eval(
        "(() => { const r = document.getElementById('map').getBoundingClientRect(); \
         return [r.left, r.top, r.width, r.height]; })()",
    );
    let r: Vec<f64> = rect
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let at = |centre: f64, lat: f64, lon: f64| {
        let x = (lon - centre + 540.0).rem_euclid(360.0) / 360.0;
        (r[0] + x * r[2], r[1] + (90.0 - lat) / 180.0 * r[3])
    };
    page.drag(at(0.0, 70.0, -10.0), at(0.0, 35.0, 40.0));
    page.settle();
    let b = check_geo(&mut page, &oracle, ty, w);
    assert!(
        (b.min_lat - 35.0).abs() < 1.0 && (b.max_lon - 40.0).abs() < 1.0,
        "the dragged box {b:?}"
    );

    page.click("#centre");
    assert_eq!(data_of(&mut page, "map", "centre"), "180");
    page.drag(at(180.0, 60.0, 150.0), at(180.0, -40.0, -115.0));
    page.settle();
    let b = check_geo(&mut page, &oracle, ty, w);
    assert!(
        b.min_lon > 145.0 && b.max_lon < -110.0,
        "a box across the antimeridian: {b:?}"
    );

    // The link the page would copy opens the same view in a new page.
    let link = page.eval("location.href");
    let mut again = Page::open(link.as_str().unwrap());
    again.settle();
    assert_eq!(shown_box(&mut again), b);
    assert_eq!(
        data_of(&mut again, "geo-count", "count"),
        data_of(&mut page, "geo-count", "count")
    );
    assert_eq!(data_of(&mut again, "map", "centre"), "180");
}

/// With an auth file the page asks for a token; once typed in, it keeps it
/// for the tab and shows the node's answers for its default view (the
/// first type, the 24 hours up to the newest event, the top 10).
#[test]
fn the_page_asks_for_a_token_and_then_answers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    let (token, line) = crate::auth::new_token("viewer", "ingest,query");
    std::fs::write(&file, line + "\n").unwrap();
    let s = TestServer::start(&["--auth-file", file.to_str().unwrap()]);
    let oracle = load_with(&s, Some(&token));

    let mut page = Page::open(&format!("{}/", s.base));
    page.settle();
    page.wait_for("!document.getElementById('login').hidden");
    let reason = page.eval("document.getElementById('login-error').textContent");
    assert!(reason.as_str().unwrap().contains("Bearer"), "{reason}");
    page.click("#token");
    page.type_text(&token);
    page.click("#login button");
    page.wait_for("document.getElementById('login').hidden");
    page.settle();
    page.wait_for("document.querySelectorAll('#topk tbody tr').length > 0");
    assert_eq!(
        page.eval("sessionStorage.getItem('desa-token')"),
        serde_json::json!(token)
    );

    let types = oracle.types();
    let first = &types.types[0];
    let newest = types.types.iter().map(|t| t.last).max().unwrap() + 1;
    let w = TimeWindow::new(newest - DAY, newest).unwrap();
    let want: Vec<(String, u64)> = oracle
        .topk(&first.event_type, w, 10)
        .devices
        .iter()
        .map(|d| (d.device_id.clone(), d.count))
        .collect();
    let rows = page.eval(
        "[...document.querySelectorAll('#topk tbody tr')].map(r => [r.dataset.device, Number(r.dataset.count)])",
    );
    let rows: Vec<(String, u64)> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows, want, "the default view's top 10");
}
