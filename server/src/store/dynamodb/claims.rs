//! Which retrievals a node's conclusions counted: pages of digests, per
//! node and hour of expiry, written by each conclusion attempt.
//!
//! A retrieval is addressed to one node (the consolidator checks it), so
//! only that node's conclusions can count it twice; and it carries its own
//! expiry, part of what was signed, the same for every copy of it. So the
//! record that it was counted lives in `claims#<node>#<hour it expires>`:
//! a repeat in any later batch lands in the same partition.
//!
//! - **Pages are immutable.** An attempt writes its retrievals of an hour
//!   as pages of 16-byte keys ([`RetrievalKey`]), plain `PutItem`s before
//!   its flip: one write unit per KB, about 0.016 per retrieval. A tally
//!   staged in chunks writes them as each chunk arrives, under the attempt
//!   its receipt and chunks name (`sk = <batch>#<attempt>#c<chunk>#<n>`),
//!   keeping no chunk; one in one piece at its conclusion, under a random
//!   attempt (`<batch>#<attempt>#l#<n>`). A page counts exactly when its
//!   batch is done with its attempt (the rule of usage rows), so the pages
//!   of an attempt that lost, was refused or stopped never count and need
//!   no undoing.
//! - **A node's conclusions are ordered** by a version (`cv`) on the node's
//!   total: an attempt reads it before it reads the pages it checks
//!   against, and its flip requires it unchanged (and bumps it). Of two
//!   conclusions of one node racing with a retrieval in common, the second
//!   flip is refused, reads again, and finds the retrieval counted.
//! - **Reads are cached per (node, hour) and version**: pages that count
//!   never change, and any new one comes with a new version, so an hour
//!   read under the current version is still exact. The consolidator's
//!   check and the conclusion then read each hour once.
//!
//! Pages carry the conclusion's `claims_end` as `ttl`: the table's time to
//! live drops them once no batch could count their retrievals again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use cid::Cid;
use ucanto::principal::Did;

use super::items::{get_s, node_pk, opt_s, parse_cid, record_pk, s, Item};
use super::table::backend;
use super::DynamoStore;
use crate::store::{retrieval_key, CountedRetrieval, RetrievalKey, StoreError};

/// Keys per page: 256 KiB, well under DynamoDB's 400 KB item limit.
pub(super) const PAGE_DIGESTS: usize = 16_384;
/// Keys the cache holds before it starts over (~64 MiB with its maps).
const CACHE_DIGESTS: usize = 2_000_000;

type Digest = RetrievalKey;

/// The keys of `retrievals`, by the hour each is filed under.
fn keys_by_hour(retrievals: &[CountedRetrieval]) -> BTreeMap<u64, Vec<Digest>> {
    let mut by_hour: BTreeMap<u64, Vec<Digest>> = BTreeMap::new();
    for r in retrievals {
        by_hour
            .entry(hour_of(r))
            .or_default()
            .push(retrieval_key(&r.retrieval));
    }
    by_hour
}

/// The keys of a page's bytes ([`page_digests`]: whole 16-byte keys).
pub(super) fn page_keys(digests: &[u8]) -> impl Iterator<Item = Digest> + '_ {
    digests
        .chunks_exact(16)
        .map(|key| Digest::try_from(key).unwrap_or_default())
}

/// The hour (since the epoch) a retrieval's claim is filed under.
pub(super) fn hour_of(retrieval: &CountedRetrieval) -> u64 {
    retrieval.expires / 3600
}

pub(super) fn claims_pk(node: &str, hour: u64) -> String {
    format!("claims#{node}#{hour}")
}

/// The digests counted in one hour of one node, with the batch of each.
type Counted = Arc<HashMap<Digest, Cid>>;

/// Hours read, by (node, hour), with the node's version they were read at.
#[derive(Default)]
pub(super) struct ClaimCache {
    hours: HashMap<(String, u64), (u64, Counted)>,
    digests: usize,
    /// Batches known done, with their attempt (a done record never changes).
    done: HashMap<Cid, String>,
}

/// A page of one attempt, as read.
pub(super) struct Page {
    pub(super) sk: String,
    pub(super) batch: Cid,
    pub(super) attempt: String,
    pub(super) digests: Vec<u8>,
}

impl DynamoStore {
    /// The version of `node`'s conclusions: `None` before its first.
    pub(super) fn node_version(&self, node: &str) -> Result<Option<u64>, StoreError> {
        match self.get((&node_pk(node), "total"))? {
            None => Ok(None),
            Some(item) => Ok(Some(
                super::items::opt_u64(&item, "cv")?.unwrap_or_default(),
            )),
        }
    }

    /// For each of `retrievals` of `node`, the batch that counted it, as of
    /// the node's `version` (read before this call).
    pub(super) fn counted_by(
        &self,
        node: &Did,
        version: Option<u64>,
        retrievals: &[CountedRetrieval],
    ) -> Result<Vec<Option<Cid>>, StoreError> {
        let mut hours: BTreeMap<u64, Counted> = BTreeMap::new();
        for retrieval in retrievals {
            let hour = hour_of(retrieval);
            if let std::collections::btree_map::Entry::Vacant(slot) = hours.entry(hour) {
                slot.insert(self.hour_counted(node.as_str(), hour, version)?);
            }
        }
        Ok(retrievals
            .iter()
            .map(|r| {
                hours[&hour_of(r)]
                    .get(&retrieval_key(&r.retrieval))
                    .copied()
            })
            .collect())
    }

    /// What counts in `node`'s pages of `hour`, from the cache when read
    /// under the same version.
    pub(super) fn hour_counted(
        &self,
        node: &str,
        hour: u64,
        version: Option<u64>,
    ) -> Result<Counted, StoreError> {
        let Some(version) = version else {
            // The node never concluded: nothing of it counts.
            return Ok(Counted::default());
        };
        let key = (node.to_string(), hour);
        if let Ok(cache) = self.claim_cache.lock() {
            if let Some((at, counted)) = cache.hours.get(&key) {
                if *at == version {
                    return Ok(counted.clone());
                }
            }
        }
        let pages = self.pages(&claims_pk(node, hour), "0", "~")?;
        let mut batches: Vec<Cid> = pages.iter().map(|p| p.batch).collect();
        batches.sort();
        batches.dedup();
        let winners = self.done_attempts(&batches)?;
        let mut counted = HashMap::new();
        for page in pages {
            if winners.get(&page.batch) != Some(&page.attempt) {
                continue;
            }
            for key in page_keys(&page.digests) {
                counted.insert(key, page.batch);
            }
        }
        let counted = Arc::new(counted);
        if let Ok(mut cache) = self.claim_cache.lock() {
            if cache.digests + counted.len() > CACHE_DIGESTS {
                cache.hours.clear();
                cache.digests = 0;
            }
            cache.digests += counted.len();
            if let Some((_, old)) = cache.hours.insert(key, (version, counted.clone())) {
                cache.digests -= old.len();
            }
        }
        Ok(counted)
    }

    /// The pages of the partition `pk` whose sort keys are between `lo`
    /// and `hi`.
    pub(super) fn pages(&self, pk: &str, lo: &str, hi: &str) -> Result<Vec<Page>, StoreError> {
        self.query(pk, lo, hi, None)?
            .into_iter()
            .map(|item| {
                Ok(Page {
                    sk: get_s(&item, "sk")?,
                    batch: parse_cid(&get_s(&item, "batch")?)?,
                    attempt: get_s(&item, "attempt")?,
                    digests: page_digests(&item)?,
                })
            })
            .collect()
    }

    /// Writes `attempt`'s pages of `batch` named `part` (`l` for a tally
    /// in one piece, `c<chunk>` for a staged chunk): its counted retrievals
    /// by hour, [`PAGE_DIGESTS`] a page, each with `ttl` (unless
    /// `u64::MAX`). Returns the hours written.
    pub(super) fn write_pages(
        &self,
        node: &Did,
        batch: &Cid,
        attempt: &str,
        part: &str,
        retrievals: &[CountedRetrieval],
        ttl: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let by_hour = keys_by_hour(retrievals);
        for (hour, digests) in &by_hour {
            for (n, page) in digests.chunks(PAGE_DIGESTS).enumerate() {
                let mut put = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(&claims_pk(node.as_str(), *hour)))
                    .item(
                        "sk",
                        s(&format!("{}{n:02}", page_prefix(batch, attempt, part))),
                    )
                    .item("batch", s(&batch.to_string()))
                    .item("attempt", s(attempt))
                    .item("d", AttributeValue::B(page.concat().into()));
                if ttl != u64::MAX {
                    put = put.item("ttl", super::items::n(ttl));
                }
                self.block_on(put.send()).map_err(backend)?;
            }
        }
        Ok(by_hour.into_keys().collect())
    }

    /// The attempt each of `batches` is done with; pending (or unknown)
    /// batches are absent. A page or usage row counts only when its attempt
    /// is its batch's.
    pub(super) fn done_attempts(
        &self,
        batches: &[Cid],
    ) -> Result<HashMap<Cid, String>, StoreError> {
        let mut done = HashMap::new();
        let mut unknown = Vec::new();
        {
            let cache = self.claim_cache.lock().ok();
            for batch in batches {
                match cache.as_ref().and_then(|c| c.done.get(batch)) {
                    Some(attempt) => {
                        done.insert(*batch, attempt.clone());
                    }
                    None => unknown.push(*batch),
                }
            }
        }
        let keys: Vec<(String, String)> = unknown
            .iter()
            .map(|b| (record_pk(b), "rec".to_string()))
            .collect();
        let records = self.get_many(&keys)?;
        let mut cache = self.claim_cache.lock().ok();
        for (batch, key) in unknown.iter().zip(&keys) {
            let Some(item) = records.get(key) else {
                continue;
            };
            if get_s(item, "status")? != "done" {
                continue;
            }
            if let Some(attempt) = opt_s(item, "attempt")? {
                if let Some(cache) = cache.as_mut() {
                    if cache.done.len() >= 1_000_000 {
                        cache.done.clear();
                    }
                    cache.done.insert(*batch, attempt.clone());
                }
                done.insert(*batch, attempt);
            }
        }
        Ok(done)
    }
}

/// The retrievals a conclusion counts, by hour of expiry, each hour's
/// sorted.
pub(super) struct OwnKeys {
    pub(super) by_hour: BTreeMap<u64, Vec<Digest>>,
}

impl OwnKeys {
    pub(super) fn len(&self) -> usize {
        self.by_hour.values().map(Vec::len).sum()
    }
}

impl DynamoStore {
    /// The retrievals `c` counts: those it lists, and those of its staged
    /// chunks, read back from the pages `attempt` wrote as they were
    /// staged. A retrieval counted twice, or a staged chunk whose pages do
    /// not hold all it counts, is [`StoreError::Invalid`].
    pub(super) fn own_keys(
        &self,
        c: &crate::store::Conclusion,
        staged: &[(Cid, super::conclusions::Summary)],
        attempt: &str,
    ) -> Result<OwnKeys, StoreError> {
        let mut by_hour = keys_by_hour(&c.counted_receipts);
        if !staged.is_empty() {
            let mut wanted: HashMap<String, (u64, u64)> = staged
                .iter()
                .map(|(cid, summary)| (format!("c{cid}"), (summary.chunk.counted, 0)))
                .collect();
            let hours: std::collections::BTreeSet<u64> = staged
                .iter()
                .flat_map(|(_, summary)| summary.hours.iter().copied())
                .collect();
            let prefix = page_prefix(&c.batch, attempt, "");
            for hour in hours {
                let pk = claims_pk(c.node.as_str(), hour);
                for page in self.pages(&pk, &prefix, &format!("{prefix}~"))? {
                    let part = page.sk[prefix.len()..]
                        .rsplit_once('#')
                        .map_or("", |(part, _)| part);
                    let Some((_, found)) = wanted.get_mut(part) else {
                        continue;
                    };
                    *found += (page.digests.len() / 16) as u64;
                    by_hour
                        .entry(hour)
                        .or_default()
                        .extend(page_keys(&page.digests));
                }
            }
            if let Some((part, (expected, found))) = wanted.iter().find(|(_, (e, f))| e != f) {
                return Err(StoreError::Invalid(format!(
                    "tally chunk {} has {found} of its {expected} retrievals staged",
                    part.trim_start_matches('c')
                )));
            }
        }
        for keys in by_hour.values_mut() {
            keys.sort_unstable();
            if keys.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err(StoreError::Invalid(
                    "a retrieval is listed twice in the tally".into(),
                ));
            }
        }
        Ok(OwnKeys { by_hour })
    }
}

/// The start of the sort keys of `attempt`'s pages of `batch` named `part`
/// (all of its parts when `part` is empty).
pub(super) fn page_prefix(batch: &Cid, attempt: &str, part: &str) -> String {
    if part.is_empty() {
        format!("{batch}#{attempt}#")
    } else {
        format!("{batch}#{attempt}#{part}#")
    }
}

/// The digests of a page item, 16 bytes each.
pub(super) fn page_digests(item: &Item) -> Result<Vec<u8>, StoreError> {
    match item.get("d") {
        Some(AttributeValue::B(b)) if b.as_ref().len() % 16 == 0 => Ok(b.clone().into_inner()),
        _ => Err(StoreError::Corrupt("claims page without digests".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retrieval_is_filed_under_the_hour_it_expires() {
        let retrieval = ucanto::dag::cid_of(ucanto::dag::RAW, b"retrieval");
        let at = |expires| CountedRetrieval { retrieval, expires };
        assert_eq!(hour_of(&at(7_199)), 1);
        assert_eq!(hour_of(&at(7_200)), 2);
        assert_eq!(
            &retrieval_key(&retrieval)[..],
            &retrieval.hash().digest()[..16]
        );
    }
}
