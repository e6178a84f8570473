//! The audit chain: how records are hashed and linked, and how a chain is verified.
//!
//! Each record's `payload_hash` is the SHA-256 of its payload text, and its `hash` is the
//! SHA-256 of a length-prefixed encoding of `(seq, at, actor, action, payload_hash,
//! prev_hash)`, where `prev_hash` is the previous record's `hash` (the genesis hash for
//! seq 1). Changing, removing or reordering any record therefore breaks the chain at that
//! record. Rewriting the whole tail consistently, or cutting it off, cannot be seen from the
//! chain alone: keep the `last_hash` a verification reports somewhere else to detect that.

use keel_core::{AuditRecord, Interaction, GENESIS_HASH};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{Result, StoreError};
use crate::store::AuditStore;
use crate::types::{AuditEntry, VerifyReport, WriteBatch};

/// Domain tag mixed into every record hash, so the encoding can change in a later version.
const HASH_DOMAIN: &[u8] = b"keel-audit-v1";

/// Records read per page while verifying or exporting a stored chain.
pub const AUDIT_PAGE: u32 = 1000;

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(bytes.as_ref()))
}

/// The canonical text of an audit timestamp: RFC 3339 in UTC with exactly nine fractional
/// digits (`2025-01-02T03:04:05.123456789Z`), so the text sorts like the instant and hashes
/// the same however the instant was written.
pub fn format_at(at: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    at.to_offset(UtcOffset::UTC)
        .format(&fmt)
        // Only years outside 0000..=9999 fail; fall back to the general RFC 3339 text.
        .or_else(|_| at.to_offset(UtcOffset::UTC).format(&Rfc3339))
        .unwrap_or_else(|_| at.unix_timestamp_nanos().to_string())
}

/// Parses an audit timestamp written by [`format_at`] (any RFC 3339 text is accepted).
pub fn parse_at(text: &str) -> std::result::Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
}

/// The `hash` a record with these fields must carry.
pub fn record_hash(
    seq: i64,
    at: OffsetDateTime,
    actor: &str,
    action: &str,
    payload_hash: &str,
    prev_hash: &str,
) -> String {
    let mut hasher = Sha256::new();
    let at = format_at(at);
    let seq = seq.to_be_bytes();
    let fields: [&[u8]; 7] = [
        HASH_DOMAIN,
        &seq,
        at.as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        payload_hash.as_bytes(),
        prev_hash.as_bytes(),
    ];
    for field in fields {
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
}

/// Builds the record that follows `prev` (`None` for the first record of a chain).
///
/// The timestamp is moved to UTC, as the store keeps it, so the record returned equals the
/// one read back later.
pub fn next_record(
    prev: Option<(i64, &str)>,
    at: OffsetDateTime,
    actor: &str,
    action: &str,
    payload: String,
) -> AuditRecord {
    let (seq, prev_hash) = match prev {
        Some((seq, hash)) => (seq.saturating_add(1), hash.to_owned()),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let at = at.to_offset(UtcOffset::UTC);
    let payload_hash = sha256_hex(payload.as_bytes());
    let hash = record_hash(seq, at, actor, action, &payload_hash, &prev_hash);
    AuditRecord { seq, at, actor: actor.to_owned(), action: action.to_owned(), payload, payload_hash, prev_hash, hash }
}

/// The payload text stored for an explicit audit entry: its JSON, compact.
pub fn entry_payload(entry: &AuditEntry) -> String {
    entry.payload.to_string()
}

/// Refuses entries whose time has no fixed-width RFC 3339 form (years outside 0000..=9999),
/// before anything is written.
pub fn check_entries(entries: &[AuditEntry]) -> Result<()> {
    match entries.iter().find(|e| !(0..=9999).contains(&e.at.to_offset(UtcOffset::UTC).year())) {
        Some(e) => Err(StoreError::InvalidInput {
            what: format!("the audit entry `{}` by `{}`", e.action, e.actor),
            reason: format!("its time {} is outside the years 0000..=9999", e.at),
        }),
        None => Ok(()),
    }
}

/// The actor of the audit record every stored interaction gets.
pub const DECISION_ACTOR: &str = "gateway";

/// The action of the audit record every stored interaction gets.
pub const DECISION_ACTION: &str = "decision";

/// The payload of an interaction's `decision` audit record: what was decided, by which
/// policy and rules, and the hashes of the texts (never the texts themselves).
pub fn decision_payload(interaction: &Interaction) -> String {
    let rules: Vec<serde_json::Value> = interaction
        .decisions
        .iter()
        .map(|d| {
            serde_json::json!({
                "phase": d.phase.as_str(),
                "action": d.action.as_str(),
                "rule": d.rule,
            })
        })
        .collect();
    serde_json::json!({
        "interaction_id": interaction.id.to_string(),
        "app": interaction.app,
        "decision": interaction.decision.as_str(),
        "policy": interaction.policy.to_string(),
        "rules": rules,
        "request_sha256": interaction.request.sha256,
        "response_sha256": interaction.response.sha256,
    })
    .to_string()
}

/// The records a batch appends after `prev` (the last stored record's seq and hash): one
/// `decision` record per interaction in order, stamped `now`, then one per explicit entry.
pub fn batch_records(prev: Option<(i64, &str)>, now: OffsetDateTime, batch: &WriteBatch) -> Vec<AuditRecord> {
    let mut records: Vec<AuditRecord> = Vec::with_capacity(batch.interactions.len() + batch.audit.len());
    let mut link: Option<(i64, String)> = prev.map(|(seq, hash)| (seq, hash.to_owned()));
    let decisions = batch.interactions.iter().map(|i| (now, DECISION_ACTOR, DECISION_ACTION, decision_payload(i)));
    let entries = batch.audit.iter().map(|e| (e.at, e.actor.as_str(), e.action.as_str(), entry_payload(e)));
    for (at, actor, action, payload) in decisions.chain(entries) {
        let record = next_record(link.as_ref().map(|(seq, hash)| (*seq, hash.as_str())), at, actor, action, payload);
        link = Some((record.seq, record.hash.clone()));
        records.push(record);
    }
    records
}

/// Checks a chain one record at a time, in seq order, remembering only the last link.
///
/// Used by [`verify_chain`] and by stores that stream their table page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    count: u64,
    last_seq: i64,
    last_hash: String,
    broken: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting seq 1 linked to the genesis hash.
    pub fn new() -> Self {
        Self { count: 0, last_seq: 0, last_hash: GENESIS_HASH.to_owned(), broken: None }
    }

    /// The seq the next record must have.
    pub fn expected_seq(&self) -> i64 {
        self.last_seq.saturating_add(1)
    }

    /// True once a bad record was seen; later records are then ignored.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Marks the chain broken at `seq` for a reason found outside the record's fields (for
    /// example a row that cannot be read), unless it is already broken earlier.
    pub fn fail(&mut self, seq: i64, reason: impl Into<String>) {
        if self.broken.is_none() {
            self.broken = Some((seq, reason.into()));
        }
    }

    /// Checks the next record; returns false (and remembers why) at the first bad one.
    pub fn push(&mut self, record: &AuditRecord) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let expected = self.expected_seq();
        if let Some(reason) = self.fault(expected, record) {
            self.broken = Some((expected, reason));
            return false;
        }
        self.count += 1;
        self.last_seq = record.seq;
        self.last_hash.clone_from(&record.hash);
        true
    }

    fn fault(&self, expected: i64, record: &AuditRecord) -> Option<String> {
        if record.seq != expected {
            return Some(if record.seq > expected {
                format!("record {expected} is missing or out of order: the next record found is {}", record.seq)
            } else {
                format!(
                    "record {} appears where record {expected} was expected (duplicated or out of order)",
                    record.seq
                )
            });
        }
        if record.prev_hash != self.last_hash {
            return Some(if expected == 1 {
                "the first record does not start from the genesis hash".to_owned()
            } else {
                format!(
                    "prev_hash does not match the hash of record {} (a record was removed, \
                     replaced or reordered)",
                    self.last_seq
                )
            });
        }
        if sha256_hex(record.payload.as_bytes()) != record.payload_hash {
            return Some("the payload does not match its payload_hash (payload changed)".to_owned());
        }
        let hash =
            record_hash(record.seq, record.at, &record.actor, &record.action, &record.payload_hash, &record.prev_hash);
        if hash != record.hash {
            return Some("the record's hash does not match its contents (a field was changed)".to_owned());
        }
        None
    }

    /// The verdict over every record pushed so far.
    pub fn finish(self) -> VerifyReport {
        match self.broken {
            Some((seq, reason)) => VerifyReport::Broken { seq, reason },
            None => VerifyReport::Ok { count: self.count, last_seq: self.last_seq, last_hash: self.last_hash },
        }
    }
}

/// Verifies a whole chain given in seq order, starting at seq 1, and reports the first bad
/// record.
///
/// A changed record breaks at its own seq; a removed record breaks at the missing seq;
/// records swapped or reordered break at the first position holding the wrong record.
pub fn verify_chain(records: impl IntoIterator<Item = AuditRecord>) -> VerifyReport {
    let mut verifier = ChainVerifier::new();
    for record in records {
        if !verifier.push(&record) {
            break;
        }
    }
    verifier.finish()
}

/// Verifies a stored chain page by page, so memory stays flat however long the chain is.
///
/// A row that cannot be read counts as a break at its seq. This is what
/// [`AuditStore::verify`] does unless a backend has a faster way.
pub async fn verify_store(store: &(impl AuditStore + ?Sized)) -> Result<VerifyReport> {
    let mut verifier = ChainVerifier::new();
    // Start below 1 so stray rows with seq <= 0 are seen too.
    let mut from = i64::MIN;
    loop {
        let page = match store.audit_records(from, i64::MAX, AUDIT_PAGE).await {
            Ok(page) => page,
            Err(StoreError::CorruptAuditRecord { seq, reason }) => {
                // Check the readable records before the bad row first: an earlier break wins.
                let readable = if seq > from {
                    store.audit_records(from, seq - 1, AUDIT_PAGE.saturating_mul(2)).await?
                } else {
                    Vec::new()
                };
                for record in &readable {
                    if !verifier.push(record) {
                        break;
                    }
                }
                let at = verifier.expected_seq();
                if at == seq {
                    verifier.fail(seq, format!("the record is unreadable: {reason}"));
                } else {
                    verifier
                        .fail(at, format!("record {at} is missing or out of order: the next record found is {seq}"));
                }
                break;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        for record in &page {
            if !verifier.push(record) {
                break;
            }
        }
        if verifier.is_broken() || (page.len() as u64) < u64::from(AUDIT_PAGE) {
            break;
        }
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    Ok(verifier.finish())
}

/// Writes every stored audit record, in seq order, as one JSON object per line; returns how
/// many were written. Reads the chain page by page.
pub async fn export_jsonl<W>(store: &(impl AuditStore + ?Sized), out: &mut W) -> Result<u64>
where
    W: AsyncWrite + Unpin + Send,
{
    let mut written = 0u64;
    let mut from = i64::MIN;
    loop {
        let page = store.audit_records(from, i64::MAX, AUDIT_PAGE).await?;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        let mut buf = Vec::with_capacity(page.len() * 256);
        for record in &page {
            serde_json::to_writer(&mut buf, record)
                .map_err(|source| StoreError::Json { what: "an audit record", source })?;
            buf.push(b'\n');
        }
        out.write_all(&buf).await.map_err(StoreError::Export)?;
        written += page.len() as u64;
        if (page.len() as u64) < u64::from(AUDIT_PAGE) {
            break;
        }
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    out.flush().await.map_err(StoreError::Export)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut records: Vec<AuditRecord> = Vec::new();
        let start = datetime!(2025-03-01 12:00:00.000000001 UTC);
        for i in 0..n {
            let prev = records.last().map(|r| (r.seq, r.hash.as_str()));
            let record = next_record(
                prev,
                start + time::Duration::milliseconds(i as i64),
                if i % 2 == 0 { "gateway" } else { "cli" },
                "decision",
                format!("{{\"n\":{i}}}"),
            );
            records.push(record);
        }
        records
    }

    fn broken_at(report: &VerifyReport) -> Option<i64> {
        match report {
            VerifyReport::Broken { seq, .. } => Some(*seq),
            VerifyReport::Ok { .. } => None,
        }
    }

    #[test]
    fn empty_chain_is_ok_at_genesis() {
        assert_eq!(
            verify_chain(Vec::new()),
            VerifyReport::Ok { count: 0, last_seq: 0, last_hash: GENESIS_HASH.to_owned() }
        );
    }

    #[test]
    fn valid_chain_verifies_with_last_link() {
        let records = chain(5);
        let last_hash = records[4].hash.clone();
        assert_eq!(verify_chain(records), VerifyReport::Ok { count: 5, last_seq: 5, last_hash });
    }

    #[test]
    fn first_record_links_to_genesis() {
        let records = chain(1);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
    }

    #[test]
    fn changed_payload_breaks_at_that_record() {
        let mut records = chain(5);
        records[2].payload = "{\"n\":99}".to_owned();
        assert_eq!(broken_at(&verify_chain(records)), Some(3));
    }

    #[test]
    fn changed_payload_with_matching_payload_hash_still_breaks_there() {
        let mut records = chain(5);
        records[2].payload = "{\"n\":99}".to_owned();
        records[2].payload_hash = sha256_hex(records[2].payload.as_bytes());
        assert_eq!(broken_at(&verify_chain(records)), Some(3));
    }

    #[test]
    fn rehashed_record_breaks_at_the_next_one() {
        let mut records = chain(5);
        let r = &mut records[2];
        r.actor = "mallory".to_owned();
        r.hash = record_hash(r.seq, r.at, &r.actor, &r.action, &r.payload_hash, &r.prev_hash);
        assert_eq!(broken_at(&verify_chain(records)), Some(4));
    }

    #[test]
    fn removed_record_breaks_at_the_missing_seq() {
        let mut records = chain(5);
        records.remove(2);
        let report = verify_chain(records);
        assert_eq!(broken_at(&report), Some(3), "{report:?}");
    }

    #[test]
    fn removed_first_record_breaks_at_one() {
        let mut records = chain(3);
        records.remove(0);
        assert_eq!(broken_at(&verify_chain(records)), Some(1));
    }

    #[test]
    fn swapped_records_break_at_the_first_of_them() {
        let mut records = chain(6);
        records.swap(1, 4);
        assert_eq!(broken_at(&verify_chain(records)), Some(2));
    }

    #[test]
    fn swapped_contents_keeping_seq_break_at_the_first_of_them() {
        let mut records = chain(6);
        let (a, b) = (records[1].clone(), records[4].clone());
        records[1] = AuditRecord { seq: 2, ..b };
        records[4] = AuditRecord { seq: 5, ..a };
        assert_eq!(broken_at(&verify_chain(records)), Some(2));
    }

    #[test]
    fn duplicated_record_breaks_at_the_copy() {
        let mut records = chain(4);
        let copy = records[1].clone();
        records.insert(2, copy);
        assert_eq!(broken_at(&verify_chain(records)), Some(3));
    }

    #[test]
    fn hash_encoding_separates_field_boundaries() {
        let a = record_hash(1, datetime!(2025-01-01 0:00 UTC), "ab", "c", "p", GENESIS_HASH);
        let b = record_hash(1, datetime!(2025-01-01 0:00 UTC), "a", "bc", "p", GENESIS_HASH);
        assert_ne!(a, b);
    }

    #[test]
    fn entries_outside_the_fixed_width_years_are_refused() {
        let mut entry = AuditEntry::now("cli", "x", serde_json::json!({}));
        assert!(check_entries(std::slice::from_ref(&entry)).is_ok());
        entry.at = datetime!(1000-01-01 0:00 UTC) - time::Duration::days(366 * 1001);
        let err = check_entries(&[entry]).unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("outside the years"), "{err}");
    }

    #[test]
    fn timestamp_text_is_fixed_width_utc_with_nanos() {
        let at = datetime!(2025-01-02 03:04:05.5 +02:00);
        assert_eq!(format_at(at), "2025-01-02T01:04:05.500000000Z");
        assert_eq!(parse_at(&format_at(at)).ok(), Some(at));
    }

    #[test]
    fn same_instant_in_another_offset_hashes_the_same() {
        let utc = datetime!(2025-01-02 01:04:05 UTC);
        let local = datetime!(2025-01-02 03:04:05 +02:00);
        assert_eq!(
            record_hash(1, utc, "a", "b", "c", GENESIS_HASH),
            record_hash(1, local, "a", "b", "c", GENESIS_HASH)
        );
    }

    /// One way to corrupt a single record of a valid chain.
    #[derive(Debug, Clone)]
    enum Mutation {
        Payload,
        PayloadAndPayloadHash,
        PayloadHash,
        Actor,
        Action,
        At(i64),
        Seq(i64),
        PrevHash,
        Hash,
        Remove,
        SwapWithNext,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            Just(Mutation::Payload),
            Just(Mutation::PayloadAndPayloadHash),
            Just(Mutation::PayloadHash),
            Just(Mutation::Actor),
            Just(Mutation::Action),
            (1i64..1_000_000_000).prop_map(Mutation::At),
            prop_oneof![-5i64..0, 1i64..5].prop_map(Mutation::Seq),
            Just(Mutation::PrevHash),
            Just(Mutation::Hash),
            Just(Mutation::Remove),
            Just(Mutation::SwapWithNext),
        ]
    }

    fn flip_hex(s: &str) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        if let Some(c) = chars.first_mut() {
            *c = if *c == '0' { '1' } else { '0' };
        }
        chars.into_iter().collect()
    }

    proptest! {
        #[test]
        fn any_single_record_mutation_is_found_at_its_seq(
            n in 1usize..24,
            pick in any::<prop::sample::Index>(),
            m in mutation(),
            payload in "[a-z ]{0,12}",
        ) {
            let mut records = chain(n);
            let k = pick.index(n);
            let seq = records[k].seq;
            match m {
                Mutation::Payload => records[k].payload.push_str(&format!(" {payload}")),
                Mutation::PayloadAndPayloadHash => {
                    records[k].payload = format!("{{\"p\":\"{payload}!\"}}");
                    records[k].payload_hash = sha256_hex(records[k].payload.as_bytes());
                }
                Mutation::PayloadHash => records[k].payload_hash = flip_hex(&records[k].payload_hash),
                Mutation::Actor => records[k].actor.push('x'),
                Mutation::Action => records[k].action = format!("{payload}.changed"),
                Mutation::At(ns) => records[k].at += time::Duration::nanoseconds(ns),
                Mutation::Seq(d) => records[k].seq += d,
                Mutation::PrevHash => records[k].prev_hash = flip_hex(&records[k].prev_hash),
                Mutation::Hash => records[k].hash = flip_hex(&records[k].hash),
                Mutation::Remove => { records.remove(k); }
                Mutation::SwapWithNext => {
                    if k + 1 < n { records.swap(k, k + 1); } else { records.swap(k - usize::from(k > 0), k); }
                }
            }
            let report = verify_chain(records);
            let tail_removed = matches!(m, Mutation::Remove) && k + 1 == n;
            let no_swap = matches!(m, Mutation::SwapWithNext) && n == 1;
            if no_swap {
                prop_assert!(report.is_ok());
            } else if tail_removed {
                // Cutting off the tail is invisible to the chain itself (see module docs).
                prop_assert_eq!(report, VerifyReport::Ok {
                    count: (n - 1) as u64,
                    last_seq: (n - 1) as i64,
                    last_hash: if n == 1 { GENESIS_HASH.to_owned() } else { chain(n)[n - 2].hash.clone() },
                });
            } else if matches!(m, Mutation::SwapWithNext) && k + 1 == n {
                // The last record swapped with the one before it: the break is at the earlier.
                prop_assert_eq!(broken_at(&report), Some(seq - 1));
            } else {
                prop_assert_eq!(broken_at(&report), Some(seq), "{:?}", report);
            }
        }
    }
}
