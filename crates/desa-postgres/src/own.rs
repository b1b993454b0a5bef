//! Who holds which shards of devices. A shard belongs with the Kafka
//! partition that carries it: shard `s` of a topic of `P` partitions rides
//! on partition `s % P` (`desa_model::shard_of`, which is Kafka's own
//! partitioner for keys), so the consumer group's assignment is the owner
//! map, and the claims in `desa_offsets` (owner, its URL, the topic's
//! partition count) are where every worker reads it. A worker keeps copies
//! of the shards of the partitions it claimed; a worker that claimed none
//! (HTTP ingest only, or before its first assignment) keeps every shard.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::Client;

use crate::error::Result;

/// This worker's claims, by source: the topic's partition count and the
/// partitions claimed.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    by_source: HashMap<String, (i32, BTreeSet<i32>)>,
}

impl Claims {
    pub fn claimed(&mut self, source: &str, partitions: &[i32], of: i32) {
        let e = self.by_source.entry(source.to_owned()).or_default();
        e.0 = of;
        e.1.extend(partitions);
    }

    pub fn released(&mut self, source: &str, partitions: &[i32]) {
        if let Some(e) = self.by_source.get_mut(source) {
            partitions.iter().for_each(|p| {
                e.1.remove(p);
            });
        }
    }

    /// The shards (of `shards`) whose partitions this worker claimed;
    /// `None` (every shard) before any claim or while a topic's partition
    /// count is unknown.
    pub fn held(&self, shards: u32) -> Option<HashSet<u32>> {
        if self.by_source.is_empty() || self.by_source.values().any(|(of, _)| *of <= 0) {
            return None;
        }
        Some(
            (0..shards)
                .filter(|s| {
                    self.by_source
                        .values()
                        .any(|(of, parts)| parts.contains(&((*s % *of as u32) as i32)))
                })
                .collect(),
        )
    }
}

/// A worker that answers for some shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub worker: String,
    pub url: String,
}

/// The owner of each shard.
pub(crate) type Owners = Arc<Vec<Option<Owner>>>;

/// How long a worker uses the owner map it read before reading it again.
/// A map that is out of date costs time, never exactness: an owner asked
/// for shards it no longer holds says so, and the asker answers for them.
const OWNERS_FOR: Duration = Duration::from_secs(1);

/// The owner map as last read, for [`OWNERS_FOR`].
#[derive(Default)]
pub(crate) struct OwnerCache {
    read: Mutex<Option<(Instant, Owners)>>,
}

impl OwnerCache {
    /// The map, read with `read` if the one held is missing or too old.
    pub fn get(
        &self,
        read: impl FnOnce() -> desa_store::Result<Vec<Option<Owner>>>,
    ) -> desa_store::Result<Owners> {
        if let Some((at, map)) = &*self.read.lock() {
            if at.elapsed() < OWNERS_FOR {
                return Ok(map.clone());
            }
        }
        let map = Arc::new(read()?);
        *self.read.lock() = Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// Drops the map held (this worker's claims changed).
    pub fn forget(&self) {
        *self.read.lock() = None;
    }
}

/// The owner of each of `shards` shards as the claims stand now (`None`:
/// no claim names one with a URL), from the first source (by name) whose
/// claims give the topic's partition count.
pub(crate) fn owners(c: &mut Client, shards: u32) -> Result<Vec<Option<Owner>>> {
    let rows = c.query(
        "SELECT source, partition, owner, owner_url, of_partitions FROM desa_offsets
          WHERE of_partitions > 0 ORDER BY source, partition",
        &[],
    )?;
    let Some(source) = rows.first().map(|r| r.get::<_, String>(0)) else {
        return Ok(vec![None; shards as usize]);
    };
    let mut by_partition: HashMap<i32, Owner> = HashMap::new();
    let mut of = 0;
    for r in rows.iter().filter(|r| r.get::<_, String>(0) == source) {
        of = of.max(r.get::<_, i32>(4));
        if let Some(url) = r.get::<_, Option<String>>(3) {
            let owner = Owner {
                worker: r.get(2),
                url,
            };
            by_partition.insert(r.get(1), owner);
        }
    }
    Ok((0..shards)
        .map(|s| by_partition.get(&((s % of.max(1) as u32) as i32)).cloned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_holds_the_shards_its_partitions_carry() {
        let mut c = Claims::default();
        assert_eq!(c.held(12), None);
        c.claimed("kafka:ev", &[1, 4], 6);
        let held = c.held(12).unwrap();
        let mut held: Vec<u32> = held.into_iter().collect();
        held.sort_unstable();
        assert_eq!(held, vec![1, 4, 7, 10]);
        c.released("kafka:ev", &[1, 4]);
        assert_eq!(c.held(12), Some(HashSet::new()));
        c.claimed("kafka:ev", &[0], 0);
        assert_eq!(c.held(12), None, "a partition count not known holds all");
    }
}
