//! A query in cluster mode: the worker asked answers for the shards it
//! holds, asks each other owner for its shards' part (`POST
//! /v1/internal/partial`, all owners at once), and adds the parts up (see
//! `desa_store::part`). A shard with no owner, or whose owner does not
//! answer or no longer holds it (a rebalance moved it), is answered here
//! from the store's blocks, which this worker then keeps until its claims
//! next change: answers stay exact whoever holds what.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use desa_engine::segment_set::SegmentSet;
use desa_model::{rank_devices, DoubleDouble};
use desa_store::{PartQuery, PartRequest, Partial, StoreError};

use crate::own::{owners, Owner};
use crate::store::PgStore;

/// How long an owner may take to answer its part before this worker
/// answers for its shards itself.
const PART_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a query reads its part again while changes of the shards
/// held overtake it, before it gives up.
const HELD_PATIENCE: Duration = Duration::from_secs(10);

/// What [`PgStore::local_part`] does with shards this worker does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Keeps copies of them too, and answers.
    Borrow,
    /// Answers nothing: the asker answers for them.
    Refuse,
}

impl PgStore {
    /// The whole answer to `query`: the parts of every shard, added up.
    pub(crate) fn fan_out(&self, query: &PartQuery) -> desa_store::Result<Partial> {
        let shards = self.shared.shards;
        let held = self.shared.blocks.held();
        let me = &self.shared.cfg.worker;
        let mut remote: HashMap<Owner, Vec<u32>> = HashMap::new();
        let mut here: Vec<u32> = Vec::new();
        if held.is_some() {
            let owners = self
                .shared
                .owners
                .get(|| self.with_query_client(|c| owners(c, shards)))?;
            for (s, owner) in (0..shards).zip(owners.iter().cloned()) {
                match owner {
                    Some(o) if &o.worker != me => remote.entry(o).or_default().push(s),
                    _ => here.push(s),
                }
            }
        } else {
            here = (0..shards).collect();
        }
        let asked: Vec<(Vec<u32>, Option<Partial>)> = std::thread::scope(|scope| {
            let calls: Vec<_> = remote
                .into_iter()
                .map(|(owner, shards)| {
                    let req = PartRequest {
                        query: query.clone(),
                        shards,
                        owner: Some(owner.worker.clone()),
                    };
                    let token = self.shared.cfg.peer_token.as_deref();
                    let agent = &self.shared.peers;
                    scope.spawn(move || {
                        let got = ask(agent, &owner, &req, token);
                        (req.shards, got)
                    })
                })
                .collect();
            calls.into_iter().filter_map(|c| c.join().ok()).collect()
        });
        let mut total = Partial::default();
        for (shards, got) in asked {
            match got {
                Some(p) => total.add(p),
                None => here.extend(shards),
            }
        }
        if !here.is_empty() {
            total.add(
                self.local_part(query, &here, Missing::Borrow)?
                    .unwrap_or_default(),
            );
        }
        if let PartQuery::Topk { k, .. } = query {
            total.devices = rank_devices(std::mem::take(&mut total.devices), *k);
        }
        Ok(total)
    }

    /// The part of `query` for `shards`, from this worker's copies brought
    /// up to the catalog as committed now; `None` if some of `shards` are
    /// not held here and `missing` says to refuse.
    ///
    /// The shards held change under a query: a rebalance revokes them,
    /// dropping their blocks from the view, then assigns. The part is read
    /// again until no shard stopped being held from before the look to the
    /// view read, for at most [`HELD_PATIENCE`].
    pub(crate) fn local_part(
        &self,
        query: &PartQuery,
        shards: &[u32],
        missing: Missing,
    ) -> desa_store::Result<Option<Partial>> {
        let deadline = std::time::Instant::now() + HELD_PATIENCE;
        while std::time::Instant::now() < deadline {
            let (held, drops) = self.shared.blocks.held_now();
            let absent: Vec<u32> = shards
                .iter()
                .copied()
                .filter(|s| held.as_ref().is_some_and(|h| !h.contains(s)))
                .collect();
            if !absent.is_empty() {
                if missing == Missing::Refuse {
                    return Ok(None);
                }
                tracing::info!(shards = ?absent, "answering for shards no owner answered for");
                self.shared.blocks.borrow(&absent);
                self.shared
                    .borrowed
                    .fetch_add(absent.len() as u64, Ordering::Relaxed);
                continue;
            }
            let view = self.current()?;
            if self.shared.blocks.drops() == drops {
                return self.part_of(&view, query, shards).map(Some);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the shards this worker holds kept changing for {} s of one query \
             (the consumer group is rebalancing); ask again",
            HELD_PATIENCE.as_secs()
        )))
    }

    /// The part of `query` for `shards` in `view`.
    fn part_of(
        &self,
        view: &crate::blocks::View,
        query: &PartQuery,
        shards: &[u32],
    ) -> desa_store::Result<Partial> {
        let wanted: HashSet<u32> = shards.iter().copied().collect();
        let set = SegmentSet::new(
            view.by_id
                .iter()
                .filter(|(id, _)| view.shard_of.get(id).is_some_and(|s| wanted.contains(s)))
                .map(|(_, seg)| seg.clone())
                .collect(),
        );
        let bad = |e: String| StoreError::Unavailable(format!("a part of a query: {e}"));
        let w = query.window().map_err(bad)?;
        Ok(match query {
            PartQuery::Avg {
                device_id,
                event_type,
                ..
            } => {
                let (n, sum) = set.avg(device_id, event_type, w);
                Partial::of_sum(n, sum)
            }
            PartQuery::Geo { event_type, .. } => {
                let bbox = query
                    .bbox()
                    .map_err(bad)?
                    .ok_or_else(|| bad("no box".into()))?;
                let (n, sum) = set.geo(event_type, &bbox, w);
                Partial::of_sum(n, sum)
            }
            PartQuery::Topk { event_type, k, .. } => Partial {
                devices: set.topk(event_type, w, *k),
                ..Partial::of_sum(0, DoubleDouble::ZERO)
            },
            PartQuery::Types => Partial {
                types: set.types().types,
                ..Partial::of_sum(0, DoubleDouble::ZERO)
            },
        })
    }
}

/// An owner's part, or `None` if it did not give one (unreachable, timed
/// out, or no longer holding the shards).
fn ask(
    agent: &ureq::Agent,
    owner: &Owner,
    req: &PartRequest,
    token: Option<&str>,
) -> Option<Partial> {
    let url = format!("{}/v1/internal/partial", owner.url.trim_end_matches('/'));
    let mut call = agent.post(&url).timeout(PART_TIMEOUT);
    if let Some(t) = token {
        call = call.set("Authorization", &format!("Bearer {t}"));
    }
    let answer = call
        .send_json(req)
        .map_err(|e| tracing::warn!(owner = %owner.worker, %url, error = %e, "an owner did not answer its part"))
        .ok()?;
    if answer.status() != 200 {
        return None;
    }
    answer
        .into_json::<Partial>()
        .map_err(
            |e| tracing::warn!(owner = %owner.worker, error = %e, "an owner's part did not parse"),
        )
        .ok()
}

/// The client a worker asks the others with: over HTTPS it trusts the CAs
/// of `cacert` (`--peer-cacert`, PEM) if given, else the well-known public
/// CAs.
pub(crate) fn peer_agent(cacert: Option<&std::path::Path>) -> crate::error::Result<ureq::Agent> {
    let builder = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5));
    Ok(match cacert {
        Some(path) => builder
            .tls_config(std::sync::Arc::new(crate::tls::https_trusting(
                path,
                "--peer-cacert",
            )?))
            .build(),
        None => builder.build(),
    })
}
