//! The embedded engine as a [`desa_store::Store`]: one node owns its data
//! directory, so claiming a partition only reads the stored offset.

use desa_model::{AvgAnswer, GeoAnswer, GeoBox, TimeWindow, TopkAnswer, TypesAnswer};
use desa_store::{Claim, Reply, Store, StoreError, StoreStats, WriteRequest};

use crate::{Engine, Error};

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Poisoned(_) => StoreError::Refused(e.to_string()),
            Error::Closed => StoreError::Closed,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl Store for Engine {
    fn write_with(&self, req: WriteRequest, reply: Reply) {
        Engine::write_with(self, req, move |r| reply(r.map_err(StoreError::from)));
    }

    fn idempotent_response(&self, key: &str) -> Option<String> {
        Engine::idempotent_response(self, key)
    }

    fn claim(&self, source: &str, partitions: &[i32], _of: i32) -> desa_store::Result<Vec<Claim>> {
        Ok(partitions
            .iter()
            .map(|&partition| Claim {
                partition,
                next_offset: self.source_offset(source, partition),
            })
            .collect())
    }

    fn watermark_secs(&self) -> Option<i64> {
        Engine::watermark_secs(self)
    }

    fn stamp(&self, event_type: &str, w: TimeWindow) -> desa_store::Result<Option<u64>> {
        Ok(Some(Engine::stamp(self, event_type, w)))
    }

    fn avg(&self, device: &str, event_type: &str, w: TimeWindow) -> desa_store::Result<AvgAnswer> {
        Ok(Engine::avg(self, device, event_type, w)?)
    }

    fn topk(&self, event_type: &str, w: TimeWindow, k: usize) -> desa_store::Result<TopkAnswer> {
        Ok(Engine::topk(self, event_type, w, k)?)
    }

    fn geo(&self, event_type: &str, bbox: &GeoBox, w: TimeWindow) -> desa_store::Result<GeoAnswer> {
        Ok(Engine::geo(self, event_type, bbox, w)?)
    }

    fn types(&self) -> desa_store::Result<TypesAnswer> {
        Ok(Engine::types(self)?)
    }

    fn stats(&self) -> StoreStats {
        let s = Engine::stats(self);
        StoreStats {
            backend: "embedded",
            stored_events: s.head_rows + s.frozen_rows + s.segment_rows,
            unflushed_events: s.head_rows + s.frozen_rows,
            segments: s.segments,
            summaries: s.summaries,
            maintenance_pending: s.maintenance_pending,
            storage_bytes: s.segment_bytes + s.summary_bytes,
            unverified_files: s.unverified_files,
            watermark_secs: s.watermark_secs,
            unavailable: s.failing,
            refused: s.poisoned.map(|p| format!("poisoned: {p}")),
        }
    }
}
