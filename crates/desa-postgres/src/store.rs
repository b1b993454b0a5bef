//! [`PgStore`]: the PostgreSQL backend of [`desa_store::Store`].
//!
//! Writes go through three writer threads, each with its own connection, one
//! transaction per request; queries use a pool of up to four connections
//! (30 s statement timeout), first to bring the local copy of the blocks up
//! to date (`blocks`), then answer from it. A merger thread merges blocks
//! (`compact`). A probe thread refreshes the figures `/healthz` shows, keeps
//! the local copy current between queries and expires idempotency keys. When
//! the database is unreachable every call fails with `Unavailable` (the HTTP
//! API answers 503 with `Retry-After`; the Kafka source retries with backoff)
//! and a probe thread reconnects, reporting in `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use desa_model::{AvgAnswer, GeoAnswer, GeoBox, TimeWindow, TopkAnswer, TypesAnswer};
use desa_store::{Claim, PartQuery, Partial, Reply, Store, StoreError, StoreStats, WriteRequest};
use parking_lot::Mutex;
use postgres::Client;

use crate::blocks::Blocks;
use crate::error::{Error, Result};
use crate::own::{Claims, OwnerCache};
use crate::schema::{self, Partitioning};
use crate::tls::Target;
use crate::write::{build_blocks, days_of, discard, write_tx};

/// Idempotency keys are kept this long, as in the embedded engine.
const KEY_RETENTION_SECS: i64 = 24 * 3600;
const QUERY_POOL: usize = 4;
/// Write transactions in flight at once (concurrent HTTP requests, and the
/// partitions of a Kafka batch, written side by side). They share no rows
/// but the offsets of a partition, which one transaction at a time holds.
const WRITERS: usize = 3;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB` (or a key=value string).
    pub url: String,
    /// Name of this worker in `desa_offsets.owner` (for operators).
    pub worker: String,
    /// Where the worker keeps its copy of the blocks (a cache: it is
    /// fetched again from the database when missing).
    pub blocks_dir: PathBuf,
    /// `--retention`: blocks of whole UTC days further behind the clock
    /// are deleted (`expire`); `None` keeps everything.
    pub retention_secs: Option<i64>,
    /// Shards of devices, if this worker creates the schema (a database
    /// keeps the number it was created with).
    pub shards: u32,
    /// Where other workers reach this one's HTTP API, to ask it for the
    /// parts of queries over the shards it holds (`None`: nobody asks it,
    /// and it keeps every shard).
    pub advertise_url: Option<String>,
    /// The bearer token this worker shows the others when it asks them for
    /// their parts (their `--auth-file`'s `query` scope).
    pub peer_token: Option<String>,
    /// PEM file of the CAs the other workers' HTTPS certificates chain to
    /// (`--peer-cacert`; default: the well-known public CAs).
    pub peer_cacert: Option<PathBuf>,
    /// `--store-password-file`: the password, when the URL holds none (see
    /// `password`).
    pub password_file: Option<PathBuf>,
}

pub(crate) struct Shared {
    pub(crate) cfg: PgConfig,
    pg: Target,
    partitioning: Partitioning,
    /// Shards of devices, as the database was created with.
    pub(crate) shards: u32,
    pub(crate) blocks: Blocks,
    /// The partitions this worker consumes, which say the shards it holds.
    claims: Mutex<Claims>,
    /// Who holds the other shards, as last read.
    pub(crate) owners: OwnerCache,
    /// The client that asks the other workers for their parts.
    pub(crate) peers: ureq::Agent,
    /// Events in the catalog, every shard's, as of the last probe.
    catalog_events: AtomicU64,
    /// Shards this worker answered for because their owner did not.
    pub(crate) borrowed: AtomicU64,
    /// This worker's claims: (source, partition) -> epoch.
    epochs: Mutex<HashMap<(String, i32), i64>>,
    /// Daily partitions known to exist.
    days: Mutex<std::collections::HashSet<i64>>,
    queries: Mutex<Vec<Client>>,
    watermark: Mutex<Option<i64>>,
    down: Mutex<Option<String>>,
    /// When the probe in flight started, if one is: a probe that has not
    /// returned for [`PROBE_DEADLINE`] means a database that accepts bytes
    /// but answers nothing (stopped, frozen), which no socket timeout sees.
    probing: Mutex<Option<Instant>>,
    storage_bytes: AtomicU64,
    writes: AtomicU64,
    write_failures: AtomicU64,
    fenced: AtomicU64,
    write_nanos: AtomicU64,
    merges: AtomicU64,
    /// Events this worker's retention deleted.
    expired: AtomicU64,
    merge_panics: AtomicU64,
    /// Merges are due, or past days wait to be left alone to be merged.
    merges_pending: AtomicBool,
    stop: AtomicBool,
}

struct Job {
    req: WriteRequest,
    reply: Reply,
}

/// A worker's connection to the shared database.
pub struct PgStore {
    pub(crate) shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn connect(pg: &Target, writer: bool) -> Result<Client> {
    let mut c = pg.connect()?;
    // A worker paused in a transaction (SIGSTOP, a long GC-like stall) must
    // not hold the offsets rows its successor needs to claim: the server
    // ends such a session and the zombie's transaction rolls back.
    if writer {
        c.batch_execute(
            "SET idle_in_transaction_session_timeout = '10s'; SET statement_timeout = '20s';
             SET client_min_messages = warning",
        )?;
    } else {
        c.batch_execute("SET statement_timeout = '30s'")?;
    }
    Ok(c)
}

impl PgStore {
    /// Connects, creates or checks the schema, and starts the writer.
    pub fn open(cfg: PgConfig) -> Result<PgStore> {
        let pg = Target::parse_with(&cfg.url, cfg.password_file.as_deref())?;
        let mut client = connect(&pg, true)?;
        let partitioning = schema::migrate(&mut client, cfg.shards)?;
        let shards = schema::shards(&mut client)?;
        let blocks = Blocks::open(&cfg.blocks_dir, &schema::cluster_id(&mut client)?)?;
        // The first look lists every block and may fetch many: on a query
        // connection, without the writers' idle-transaction timeout.
        blocks.sync(&mut connect(&pg, false)?)?;
        blocks.remove_unlisted(std::time::Duration::ZERO);
        let peers = crate::fanout::peer_agent(cfg.peer_cacert.as_deref())?;
        let shared = Arc::new(Shared {
            cfg,
            pg,
            partitioning,
            shards,
            blocks,
            claims: Mutex::new(Claims::default()),
            owners: OwnerCache::default(),
            peers,
            catalog_events: AtomicU64::new(0),
            borrowed: AtomicU64::new(0),
            epochs: Mutex::new(HashMap::new()),
            days: Mutex::new(Default::default()),
            queries: Mutex::new(Vec::new()),
            watermark: Mutex::new(None),
            down: Mutex::new(None),
            probing: Mutex::new(None),
            storage_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            write_nanos: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            merge_panics: AtomicU64::new(0),
            merges_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        refresh(&shared, &mut client, true)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(f)
                .map_err(|e| Error::Config(format!("cannot start thread {name}: {e}")))
        };
        let mut threads = Vec::new();
        let mut first = Some(client);
        for i in 0..WRITERS {
            let (shared, rx, client) = (shared.clone(), rx.clone(), first.take());
            threads.push(spawn(
                format!("desa-pg-writer-{i}"),
                Box::new(move || writer_loop(&shared, client, &rx)),
            )?);
        }
        let s = shared.clone();
        threads.push(spawn(
            "desa-pg-probe".into(),
            Box::new(move || probe_loop(&s)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "desa-pg-merge".into(),
            Box::new(move || merge_loop(&s)),
        )?);
        Ok(PgStore {
            shared,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    /// The blocks as committed when the call started, for a query.
    pub(crate) fn current(&self) -> desa_store::Result<Arc<crate::blocks::View>> {
        self.with_query_client(|c| self.shared.blocks.sync(c))?;
        Ok(self.shared.blocks.view())
    }

    /// Runs `f` on a pooled query connection; a failed connection is dropped.
    pub(crate) fn with_query_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T>,
    ) -> desa_store::Result<T> {
        // A database that has not answered the probe for seconds would hold
        // this query's thread as well: refuse at once instead.
        if let Some(waited) = frozen_for(&self.shared) {
            return Err(StoreError::Unavailable(no_answer(waited)));
        }
        let pooled = self.shared.queries.lock().pop();
        let mut client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.shared.pg, false).map_err(|e| unavailable(&self.shared, &e))?,
        };
        match f(&mut client) {
            Ok(v) => {
                let mut pool = self.shared.queries.lock();
                if pool.len() < QUERY_POOL {
                    pool.push(client);
                }
                Ok(v)
            }
            Err(e) => Err(unavailable(&self.shared, &e)),
        }
    }
}

/// How long a probe may wait for an answer before the database counts as
/// unavailable.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// Why the database is unavailable, if it is: the last failure seen, or a
/// probe waiting past [`PROBE_DEADLINE`].
fn down_reason(shared: &Shared) -> Option<String> {
    shared
        .down
        .lock()
        .clone()
        .or_else(|| frozen_for(shared).map(no_answer))
}

fn no_answer(waited: Duration) -> String {
    format!("no answer from PostgreSQL for {} s", waited.as_secs())
}

/// How long the probe in flight has waited, once past [`PROBE_DEADLINE`].
fn frozen_for(shared: &Shared) -> Option<Duration> {
    let started = (*shared.probing.lock())?;
    Some(started.elapsed()).filter(|&w| w >= PROBE_DEADLINE)
}

fn unavailable(shared: &Shared, e: &Error) -> StoreError {
    let msg = e.describe();
    if let Error::Db(db) = e {
        if db.is_closed() || db.as_db_error().is_none() {
            *shared.down.lock() = Some(msg.clone());
        }
    }
    StoreError::Unavailable(msg)
}

/// Brings the local copy of the blocks up to date (which `/healthz` and
/// `/metrics` count from) and raises the watermark to its newest event
/// (every worker's event-time progress). A `full` call also reads the
/// storage size, expires idempotency keys and cleans the block directory.
fn refresh(shared: &Shared, c: &mut Client, full: bool) -> Result<()> {
    shared.blocks.sync(c)?;
    let events: i64 = c
        .query_one(
            "SELECT coalesce(sum(events), 0)::int8 FROM desa_blocks",
            &[],
        )?
        .get(0);
    shared
        .catalog_events
        .store(events as u64, Ordering::Relaxed);
    let newest = shared.blocks.view().max_ts;
    {
        let mut w = shared.watermark.lock();
        *w = (*w).max(newest);
    }
    if !full {
        return Ok(());
    }
    shared.blocks.remove_unlisted(crate::blocks::CLEANUP_AGE);
    let bytes: i64 = c
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::int8 FROM pg_class
              WHERE relname LIKE 'desa\\_%' AND relkind = 'r'",
            &[],
        )?
        .get(0);
    shared.storage_bytes.store(bytes as u64, Ordering::Relaxed);
    c.execute(
        "DELETE FROM desa_idempotency WHERE created_secs < $1",
        &[&(now_secs() - KEY_RETENTION_SECS)],
    )?;
    Ok(())
}

fn probe_loop(shared: &Shared) {
    let mut client: Option<Client> = None;
    let mut round = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        round += 1;
        let full = round % 5 == 1;
        *shared.probing.lock() = Some(Instant::now());
        let result = match client.as_mut() {
            Some(c) if !c.is_closed() => refresh(shared, c, full),
            _ => connect(&shared.pg, false).and_then(|mut c| {
                let r = refresh(shared, &mut c, full);
                client = Some(c);
                r
            }),
        };
        *shared.probing.lock() = None;
        match result {
            Ok(()) => {
                if shared.down.lock().take().is_some() {
                    tracing::info!("PostgreSQL is reachable again");
                }
            }
            Err(e) => {
                let msg = e.describe();
                tracing::warn!(error = %msg, "PostgreSQL probe failed");
                *shared.down.lock() = Some(msg);
                client = None;
            }
        }
        for _ in 0..10 {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Drops the blocks retention has expired, if it is on; true if it dropped
/// some.
fn expire(shared: &Shared, c: &mut Client) -> Result<bool> {
    let Some(keep) = shared.cfg.retention_secs else {
        return Ok(false);
    };
    let first_kept = desa_model::first_kept_secs(now_secs(), keep);
    let dropped = crate::expire::expire_once(&shared.blocks, c, first_kept)?;
    shared.expired.fetch_add(dropped, Ordering::Relaxed);
    Ok(dropped > 0)
}

/// Merges blocks while merges are due, then drops what retention has
/// expired, then looks again every half second.
/// Failures (the database down, another worker's merge first) are retried
/// on a new connection, which also drops any advisory lock the failed one
/// held; a panic is reported and the loop goes on.
fn merge_loop(shared: &Shared) {
    let mut client: Option<Client> = None;
    let mut quiet = crate::compact::Quiet::default();
    while !shared.stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&shared.pg, true).ok();
        }
        let merged = match client.as_mut() {
            Some(c) => {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let (merged, pending) =
                        crate::compact::merge_once(&shared.blocks, c, &mut quiet)?;
                    Ok::<_, Error>((merged || expire(shared, c)?, pending))
                }));
                match run {
                    Ok(Ok((merged, pending))) => {
                        shared.merges_pending.store(pending, Ordering::Relaxed);
                        merged
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e.describe(), "merge failed; retrying");
                        client = None;
                        false
                    }
                    Err(_) => {
                        tracing::error!("a merge panicked; retrying");
                        shared.merge_panics.fetch_add(1, Ordering::Relaxed);
                        client = None;
                        false
                    }
                }
            }
            None => false,
        };
        if merged {
            shared.merges.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        for _ in 0..5 {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn writer_loop(shared: &Shared, mut client: Option<Client>, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let next = rx.lock().recv();
        let Ok(job) = next else { return };
        let started = Instant::now();
        let result = write_one(shared, &mut client, &job.req);
        shared
            .write_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match &result {
            Ok(_) => {
                shared.writes.fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = job.req.events.iter().map(|e| e.ts_secs).max() {
                    let mut w = shared.watermark.lock();
                    *w = Some(w.map_or(ts, |x| x.max(ts)));
                }
            }
            Err(StoreError::Fenced { .. }) => {
                shared.fenced.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.write_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        (job.reply)(result);
    }
}

fn write_one(
    shared: &Shared,
    client: &mut Option<Client>,
    req: &WriteRequest,
) -> desa_store::Result<desa_store::WriteOutcome> {
    let built = build_blocks(&shared.blocks, &req.events, shared.shards)
        .map_err(|e| StoreError::Unavailable(e.describe()))?;
    let result = commit_one(shared, client, req, &built);
    match result {
        Ok((outcome, ids)) if !ids.is_empty() => {
            // Committed: a block whose file cannot be kept is fetched back
            // from the database by the next look at the catalog.
            if let Err(e) = shared.blocks.keep(built, &ids) {
                tracing::warn!(error = %e.describe(), "keeping a committed block locally failed");
            }
            Ok(outcome)
        }
        Ok((outcome, _)) => {
            discard(built);
            Ok(outcome)
        }
        Err(e) => {
            discard(built);
            Err(e)
        }
    }
}

fn commit_one(
    shared: &Shared,
    client: &mut Option<Client>,
    req: &WriteRequest,
    built: &[crate::blocks::NewBlock],
) -> desa_store::Result<(desa_store::WriteOutcome, Vec<i64>)> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(&shared.pg, true).map_err(|e| unavailable(shared, &e))?);
    }
    let Some(c) = client.as_mut() else {
        return Err(StoreError::Unavailable("no connection".into()));
    };
    if shared.partitioning == Partitioning::Declarative {
        let days = days_of(&req.events, shared.shards);
        if days.iter().any(|d| !shared.days.lock().contains(d)) {
            // Another worker may have created them: read the catalog first.
            let fail = |e: Error| unavailable(shared, &e);
            let existing = schema::existing_day_partitions(c).map_err(fail)?;
            let mut known = shared.days.lock().clone();
            known.extend(existing);
            let created = schema::create_day_partitions(c, &days, &known).map_err(fail)?;
            known.extend(created);
            *shared.days.lock() = known;
        }
    }
    let epochs = shared.epochs.lock().clone();
    write_tx(c, req, built, &epochs, now_secs()).map_err(|f| {
        let e = StoreError::from(f);
        if let StoreError::Unavailable(msg) = &e {
            if c.is_closed() {
                *shared.down.lock() = Some(msg.clone());
            }
        }
        e
    })
}

impl Store for PgStore {
    fn write_with(&self, req: WriteRequest, reply: Reply) {
        // As for queries: a write would only join the wait.
        if let Some(waited) = frozen_for(&self.shared) {
            return reply(Err(StoreError::Unavailable(no_answer(waited))));
        }
        match self.tx.lock().as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(Job { req, reply }) {
                    (job.reply)(Err(StoreError::Closed));
                }
            }
            None => reply(Err(StoreError::Closed)),
        }
    }

    fn idempotent_response(&self, key: &str) -> Option<String> {
        self.with_query_client(|c| {
            Ok(c.query_opt(
                "SELECT response FROM desa_idempotency WHERE key = $1",
                &[&key],
            )?
            .map(|r| r.get(0)))
        })
        .ok()
        .flatten()
    }

    /// Bumps each partition's epoch: from now on only this worker's writes
    /// for it commit. Waits for a transaction of the previous owner that
    /// holds the row (at most the server's idle/statement timeouts).
    fn claim(&self, source: &str, partitions: &[i32], of: i32) -> desa_store::Result<Vec<Claim>> {
        let worker = self.shared.cfg.worker.clone();
        let url = self.shared.cfg.advertise_url.clone();
        let mut parts = partitions.to_vec();
        parts.sort_unstable();
        let rows = self.with_query_client(|c| {
            Ok(c.query(
                "INSERT INTO desa_offsets AS o
                        (source, partition, next_offset, epoch, owner, owner_url, of_partitions)
                 SELECT $1, p, NULL, 1, $3, $4, $5 FROM unnest($2::int4[]) AS p
                 ON CONFLICT (source, partition) DO UPDATE
                 SET epoch = o.epoch + 1, owner = $3, owner_url = $4, of_partitions = $5
                 RETURNING partition, next_offset, epoch",
                &[&source, &parts, &worker, &url, &of],
            )?)
        })?;
        let mut epochs = self.shared.epochs.lock();
        let mut claims = Vec::with_capacity(rows.len());
        for r in rows {
            let partition: i32 = r.get(0);
            epochs.insert((source.to_owned(), partition), r.get(2));
            claims.push(Claim {
                partition,
                next_offset: r.get(1),
            });
        }
        drop(epochs);
        tracing::info!(source, ?claims, worker = %worker, "claimed partitions");
        if url.is_some() {
            let mut held = self.shared.claims.lock();
            held.claimed(source, partitions, of);
            self.shared.blocks.hold(held.held(self.shared.shards));
            self.shared.owners.forget();
        }
        Ok(claims)
    }

    fn release(&self, source: &str, partitions: &[i32]) {
        if self.shared.cfg.advertise_url.is_some() {
            let mut held = self.shared.claims.lock();
            held.released(source, partitions);
            self.shared.blocks.hold(held.held(self.shared.shards));
            self.shared.owners.forget();
        }
    }

    fn partial(&self, req: &desa_store::PartRequest) -> desa_store::Result<Option<Partial>> {
        if req
            .owner
            .as_ref()
            .is_some_and(|o| o != &self.shared.cfg.worker)
        {
            return Ok(None);
        }
        self.local_part(&req.query, &req.shards, crate::fanout::Missing::Refuse)
    }

    fn watermark_secs(&self) -> Option<i64> {
        *self.shared.watermark.lock()
    }

    fn stamp(&self, event_type: &str, w: TimeWindow) -> desa_store::Result<Option<u64>> {
        self.with_query_client(|c| self.shared.blocks.sync(c))?;
        Ok(Some(self.shared.blocks.stamp(event_type, w)))
    }

    fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> desa_store::Result<AvgAnswer> {
        let part = self.fan_out(&PartQuery::Avg {
            device_id: device.to_owned(),
            event_type: event_type.to_owned(),
            start: w.start,
            end: w.end,
        })?;
        Ok(AvgAnswer::new(
            device,
            event_type,
            w,
            part.count,
            part.sum().value(),
        ))
    }

    fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> desa_store::Result<TopkAnswer> {
        let devices = self
            .fan_out(&PartQuery::Topk {
                event_type: event_type.to_owned(),
                start: w.start,
                end: w.end,
                k,
            })?
            .devices;
        Ok(TopkAnswer {
            event_type: event_type.to_owned(),
            start: w.start,
            end: w.end,
            k,
            devices,
        })
    }

    fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> desa_store::Result<GeoAnswer> {
        let part = self.fan_out(&PartQuery::Geo {
            event_type: event_type.to_owned(),
            start: w.start,
            end: w.end,
            min_lat: bbox.min_lat,
            max_lat: bbox.max_lat,
            min_lon: bbox.min_lon,
            max_lon: bbox.max_lon,
        })?;
        Ok(GeoAnswer::new(
            event_type,
            w,
            bbox,
            part.count,
            part.sum().value(),
        ))
    }

    fn types(&self) -> desa_store::Result<TypesAnswer> {
        Ok(TypesAnswer {
            types: self.fan_out(&PartQuery::Types)?.types,
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            backend: "postgres",
            stored_events: self.shared.catalog_events.load(Ordering::Relaxed),
            unflushed_events: 0,
            segments: self.shared.blocks.view().by_id.len() as u64,
            summaries: 0,
            maintenance_pending: self.shared.merges_pending.load(Ordering::Relaxed),
            storage_bytes: self.shared.storage_bytes.load(Ordering::Relaxed),
            // Block copies are verified when they are opened.
            unverified_files: 0,
            watermark_secs: *self.shared.watermark.lock(),
            unavailable: down_reason(&self.shared),
            refused: None,
        }
    }

    fn metrics(&self) -> String {
        let s = &self.shared;
        let mut out = String::new();
        let up = down_reason(s).is_none() as u8;
        let _ = writeln!(
            out,
            "# HELP desa_postgres_up 1 when the database answers.\n# TYPE desa_postgres_up gauge\ndesa_postgres_up {up}"
        );
        for (name, help, v) in [
            (
                "desa_postgres_write_transactions_total",
                "Write transactions committed.",
                s.writes.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_write_failures_total",
                "Write transactions that failed (retried by the caller).",
                s.write_failures.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_fenced_writes_total",
                "Writes refused because another worker had claimed their partitions.",
                s.fenced.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_block_merges_total",
                "Merges of blocks this worker committed.",
                s.merges.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_retention_dropped_events_total",
                "Events this worker's --retention deleted (whole expired days).",
                s.expired.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_shards_answered_for_owners_total",
                "Shards whose part of a query this worker answered from the store because their owner did not (dead, partitioned, or no longer holding them); it keeps them until its claims next change.",
                s.borrowed.load(Ordering::Relaxed),
            ),
            (
                "desa_postgres_block_merge_panics_total",
                "Merges that panicked (a bug; the merger goes on).",
                s.merge_panics.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let view = s.blocks.view();
        let _ = writeln!(
            out,
            "# HELP desa_postgres_blocks Blocks in this worker's copy.\n# TYPE desa_postgres_blocks gauge\ndesa_postgres_blocks {}",
            view.by_id.len()
        );
        let held = s.blocks.held().map_or(s.shards as usize, |h| h.len());
        let _ = writeln!(
            out,
            "# HELP desa_postgres_shards_held Shards of devices this worker keeps copies of.\n# TYPE desa_postgres_shards_held gauge\ndesa_postgres_shards_held {held}"
        );
        let _ = writeln!(
            out,
            "# HELP desa_postgres_block_bytes Bytes of the blocks in this worker's copy.\n# TYPE desa_postgres_block_bytes gauge\ndesa_postgres_block_bytes {}",
            view.bytes
        );
        let secs = s.write_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "# HELP desa_postgres_write_seconds_total Time spent in write transactions.\n# TYPE desa_postgres_write_seconds_total counter\ndesa_postgres_write_seconds_total {secs}"
        );
        out
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.tx.lock().take();
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}
