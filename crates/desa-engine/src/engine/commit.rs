//! The commit thread: group commit of writes to the log, then into the head;
//! freezing a full head for the flusher.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flush::report_background;
use super::{advance_offsets, Commit, Frozen, Inner, Reply};
use crate::error::Error;
use crate::head::Head;
use crate::wal::{encode_parts, RecordParts, WalWriter};
use crate::{WriteOutcome, WriteRequest};

const MAX_GROUP_BYTES: usize = 64 << 20;

pub(super) fn committer_loop(inner: &Inner, mut wal: WalWriter, rx: mpsc::Receiver<Commit>) {
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let first = match rx.recv_timeout(inner.cfg.idle_flush_after) {
            Ok(c) => c,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // No write for `idle_flush_after` (see `EngineConfig`).
                let idle_head_is_large = inner.poisoned.lock().is_none()
                    && inner.state.read().head.len() >= inner.cfg.idle_flush_rows;
                if idle_head_is_large {
                    freeze_head(inner, &mut wal);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut approx = 0usize;
        while approx < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    approx += c.req.as_ref().map_or(0, |r| r.events.len() * 100);
                    group.push(c);
                }
                Err(_) => break,
            }
        }
        commit_group(inner, &mut wal, group, &mut buf);
    }
}

fn commit_group(inner: &Inner, wal: &mut WalWriter, group: Vec<Commit>, buf: &mut Vec<u8>) {
    if let Some(p) = inner.poisoned.lock().clone() {
        for c in group {
            (c.reply)(Err(Error::Poisoned(p.clone())));
        }
        return;
    }
    if let Some(why) = cannot_take_more(inner) {
        for c in group {
            (c.reply)(Err(Error::Unavailable(why.clone())));
        }
        return;
    }
    let now = inner.clock.now_secs();
    let mut force_freeze = false;
    let mut barriers: Vec<Reply> = Vec::new();
    let mut replays: Vec<(Reply, String)> = Vec::new();
    let mut applies: Vec<(WriteRequest, Reply)> = Vec::new();
    {
        let st = inner.state.read();
        let mut in_group: HashMap<String, String> = HashMap::new();
        for c in group {
            let Some(req) = c.req else {
                force_freeze = true;
                barriers.push(c.reply);
                continue;
            };
            if let Some(k) = &req.idempotency_key {
                if let Some(resp) = st
                    .keys
                    .get(k)
                    .map(str::to_owned)
                    .or_else(|| in_group.get(k).cloned())
                {
                    replays.push((c.reply, resp));
                    continue;
                }
                in_group.insert(k.clone(), req.response.clone());
            }
            applies.push((req, c.reply));
        }
    }
    buf.clear();
    let mut encoded = Vec::with_capacity(applies.len());
    for (req, reply) in applies {
        // The response is only needed to answer a retry of a keyed request.
        let response = if req.idempotency_key.is_some() {
            req.response.as_str()
        } else {
            ""
        };
        let parts = RecordParts {
            idempotency_key: req.idempotency_key.as_deref(),
            response,
            created_secs: now,
            events: &req.events,
            source_offsets: &req.source_offsets,
        };
        match encode_parts(&parts, buf) {
            Ok(()) => encoded.push((req, reply)),
            Err(e) => reply(Err(e)),
        }
    }
    let applies = encoded;
    if !buf.is_empty() {
        let started = Instant::now();
        if let Err(e) = wal.append_durable(buf) {
            if let Error::Poisoned(p) = &e {
                tracing::error!(error = %p, "write-ahead log poisoned; refusing further writes");
                *inner.poisoned.lock() = Some(p.clone());
            }
            let msg = e.to_string();
            let poisoned = matches!(e, Error::Poisoned(_));
            let fail = || {
                if poisoned {
                    Error::Poisoned(msg.clone())
                } else {
                    Error::Unavailable(msg.clone())
                }
            };
            for reply in applies
                .into_iter()
                .map(|a| a.1)
                .chain(replays.into_iter().map(|r| r.0))
                .chain(barriers)
            {
                reply(Err(fail()));
            }
            return;
        }
        inner
            .observer
            .wal_synced(started.elapsed(), buf.len(), applies.len());
    }
    let freeze = {
        let mut st = inner.state.write();
        // Raised with the events' visibility and before their replies (see
        // `desa_store::WriteEpochs`).
        let epoch = st.epochs.new_epoch();
        let mut last_touched: Option<(&str, i64)> = None;
        for (req, _) in &applies {
            advance_offsets(&mut st.offsets, &req.source_offsets);
            for e in &req.events {
                st.head.insert(e);
                st.watermark = Some(st.watermark.map_or(e.ts_secs, |w| w.max(e.ts_secs)));
                let touched = (e.event_type.as_str(), desa_store::day_of(e.ts_secs));
                if last_touched != Some(touched) {
                    st.epochs.touch(touched.0, touched.1, epoch);
                    last_touched = Some(touched);
                }
            }
            if let Some(k) = &req.idempotency_key {
                st.keys.insert(k.clone(), req.response.clone(), now);
            }
        }
        (force_freeze && !st.head.is_empty())
            || st.head.len() >= inner.cfg.head_max_rows
            || st.head.approx_bytes() >= inner.cfg.head_max_bytes
    };
    for (_, reply) in applies {
        reply(Ok(WriteOutcome::Applied));
    }
    for (reply, resp) in replays {
        reply(Ok(WriteOutcome::Replayed(resp)));
    }
    if freeze {
        freeze_head(inner, wal);
    }
    for reply in barriers {
        reply(Ok(WriteOutcome::Applied));
    }
}

/// Why no write can be taken now, if so: the head is full, every frozen
/// head is still waiting for the flusher, and flushes are failing. Taking
/// more would grow memory without bound for as long as the fault lasts; the
/// writer is told so (503) and nothing of its request is stored.
fn cannot_take_more(inner: &Inner) -> Option<String> {
    let (flush, rotation) = {
        let failing = inner.failing.lock();
        (
            failing.get("flush").cloned(),
            failing.get("log rotation").cloned(),
        )
    };
    if flush.is_none() && rotation.is_none() {
        return None;
    }
    let st = inner.state.read();
    let head_full = st.head.len() >= inner.cfg.head_max_rows
        || st.head.approx_bytes() >= inner.cfg.head_max_bytes;
    let frozen_full = st.frozen.len() >= inner.cfg.max_frozen_heads;
    match (flush, rotation) {
        (_, Some(e)) if head_full => Some(format!("a new log file cannot be started ({e})")),
        (Some(e), _) if head_full && frozen_full => {
            Some(format!("events cannot be flushed to segments ({e})"))
        }
        _ => None,
    }
}

/// Moves the head to the frozen queue and starts a new log file for the next
/// head; waits while the flusher is too far behind (backpressure), but not
/// while flushes fail: the head then stays, and once it is full writes are
/// refused (`cannot_take_more`) until a flush succeeds.
fn freeze_head(inner: &Inner, wal: &mut WalWriter) {
    {
        let mut guard = inner.frozen_lock.lock();
        while inner.state.read().frozen.len() >= inner.cfg.max_frozen_heads {
            if inner.poisoned.lock().is_some() || inner.failing.lock().contains_key("flush") {
                return;
            }
            inner
                .frozen_cv
                .wait_for(&mut guard, Duration::from_millis(100));
        }
    }
    // The head stays in memory until a new log file starts; the next
    // commit tries again, and writes are refused once the head is full.
    let wal_next = match wal.rotate() {
        Ok(n) => {
            report_background(inner, "log rotation", Ok(()));
            n
        }
        Err(e) => {
            report_background(inner, "log rotation", Err(e));
            return;
        }
    };
    {
        let mut st = inner.state.write();
        let head = std::mem::replace(&mut st.head, Head::new());
        st.frozen.push_back(Frozen {
            head: Arc::new(head),
            wal_next,
        });
    }
    *inner.flush_wake.lock() = true;
    inner.flush_cv.notify_all();
}
