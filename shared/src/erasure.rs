//! The erasure ledger: the right to deletion for data that lives on in
//! backups. Backups are immutable (and may be under Object Lock), so they
//! are not rewritten; instead each erasure request is appended under
//! `erasures/` and every restore applies the whole ledger before it
//! commits, so an erased person never comes back from any backup. Old
//! backups age out under the retention policy (`backupctl erase --report`
//! says when). See `docs/GDPR.md`.
//!
//! A ledger record names the table in clear, but the key that identifies
//! the person (`id=…`) is sealed like backup data (AES-256-CBC + HMAC under
//! a per-record key from the master key), and the whole record carries a
//! MAC, so the ledger holds no readable personal data and cannot be forged
//! to delete other rows.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::envelope::{BackupKeys, ChunkPosition, FLAG_LAST_IN_SECTION, MetadataKey, SALT_LEN};
use crate::identity::{IdentityError, REPOSITORY_IDENTITY_KEY};
use crate::keyring::{Keyring, KeyringError, MasterKey};
use crate::ledger_head::{HeadStoreError, SharedHeadStore};
use crate::metadata::{canonical_document, rfc3339_millis};
use crate::postgres::schema::QualifiedName;
use crate::storage::{SharedStore, StorageError, get_bytes};

/// HKDF `info` of the key that authenticated ledger records written before
/// the chain (no sequence number); still read, never written.
pub const ERASURE_MAC_INFO: &[u8] = b"pgbackup/v1 erasure mac";
/// HKDF `info` prefix of the key that authenticates chained records; the
/// repository id follows, so a record copied from another repository that
/// shares the keyring fails its MAC here.
pub const CHAINED_ERASURE_MAC_INFO: &[u8] = b"pgbackup/v2 erasure mac ";
/// HKDF `info` prefix of the key that seals the ledger head; the
/// repository id follows.
pub const LEDGER_HEAD_MAC_INFO: &[u8] = b"pgbackup/v2 erasure ledger head ";
const LEDGER_PREFIX: &str = "erasures/";
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Where a sealed key sits, for the chunk MAC: no backup has this section.
const SEALED_KEY_POSITION: ChunkPosition = ChunkPosition {
    section: u32::MAX,
    chunk: 0,
};
const SET_ASIDE_HINT: &str = "if it is junk (not a record an erase wrote), set it aside with `backupctl ledger set-aside <key> --reason …` (audited; needs the ledger head)";

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("the erasure key {0:?} is not column=value (e.g. id=cl9x2…); give --key once per key column")]
    MalformedKey(String),
    #[error("an erasure needs a table and at least one key column, each with a name")]
    Incomplete,
    #[error(
        "no table {table} in the newest backup ({backup}), so this erasure would erase nothing and was not recorded; names are case-sensitive (run `backupctl list` and give the table as the backup holds it)"
    )]
    UnknownTable { table: String, backup: String },
    #[error(
        "table {table} in the newest backup ({backup}) has no column {column:?} (it has {columns}), so this erasure would erase nothing and was not recorded; names are case-sensitive"
    )]
    UnknownColumn {
        table: String,
        column: String,
        columns: String,
        backup: String,
    },
    #[error(
        "the erasure ledger record {key} fails its MAC: it was altered, forged or copied from another repository, so no restore can trust the ledger; find out who can write to the backup store and restore the record from its versions; {SET_ASIDE_HINT}"
    )]
    Tampered { key: String },
    #[error(
        "the erasure ledger object {key} holds record {id}, which belongs at erasures/{id}.json: a record was copied over another one's key, so the one that was there is lost; restore {key} from its versions"
    )]
    Misplaced { key: String, id: String },
    #[error(
        "the erasure ledger is broken at record {seq} ({key}): {reason}; a record was deleted, replaced or inserted, so no restore can trust the ledger. Restore the missing record from the bucket's versions"
    )]
    ChainBroken { seq: u64, key: String, reason: String },
    #[error(
        "the erasure ledger holds {found} records but its head ({location}) says {expected}: a record was deleted (or replaced) since the head was sealed, so nothing was restored. Restore the newest records of erasures/ from the bucket's versions"
    )]
    ChainShorter {
        found: u64,
        expected: u64,
        location: String,
    },
    #[error(
        "the erasure ledger's records from before the chain changed ({found} now, {expected} when its head {location} adopted them): one was deleted, replaced or added, so nothing was restored. Restore them from the bucket's versions"
    )]
    LegacyChanged {
        found: u64,
        expected: u64,
        location: String,
    },
    #[error(
        "the erasure ledger record {key} (number {seq}) is sealed with key id {found}, but the key current when it was added was {expected}: someone holding an old key added or rewrote it, so nothing was restored. Find out who can write to the backup store; {SET_ASIDE_HINT}"
    )]
    NotUnderCurrentKey {
        key: String,
        seq: u64,
        found: String,
        expected: String,
    },
    #[error(
        "the erasure ledger record {key} is sealed with key id {key_id:?}, which the keyring no longer holds (it holds {configured}); the ledger cannot be read without it, so nothing was restored. Put {key_id} back in the keyring: a key stays needed while ledger records or backups under it exist"
    )]
    RecordKeyRetired {
        key: String,
        key_id: String,
        configured: String,
    },
    #[error(
        "the erasure ledger head at {location} is sealed with key id {key_id:?}, which the keyring no longer holds; put it back in the keyring (the head is re-sealed under the current key by the next erase or restore)"
    )]
    HeadKeyRetired { location: String, key_id: String },
    #[error(
        "the erasure ledger head at {location} is unreadable or fails its MAC: it was altered, so no restore can trust the ledger"
    )]
    HeadTampered { location: String },
    #[error(
        "{REPOSITORY_IDENTITY_KEY} names repository {stored}, but the erasure ledger head at {location} belongs to repository {head}: the identity was replaced, or the head is another repository's"
    )]
    RepositoryMismatch {
        stored: String,
        head: String,
        location: String,
    },
    #[error(
        "the erasure ledger is bound to a repository id but the store has no {REPOSITORY_IDENTITY_KEY}: it was deleted; restore it from the bucket's versions"
    )]
    RepositoryIdentityMissing,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "setting ledger objects aside is recorded in the ledger head: set BACKUP_LEDGER_HEAD_FILE (or BACKUP_LEDGER_HEAD_SECRET_ARN in AWS)"
    )]
    SetAsideNeedsHead,
    #[error("{key} is not under erasures/, so it is not part of the ledger")]
    NotInLedger { key: String },
    #[error(
        "{key} is an authentic erasure record of this ledger, so it is not set aside: setting it aside would bring its subject back"
    )]
    AuthenticRecord { key: String },
    #[error("setting ledger objects aside needs a reason (e.g. the incident it belongs to)")]
    SetAsideWithoutReason,
    #[error(transparent)]
    HeadStore(#[from] HeadStoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the operating system's random number generator failed")]
    Randomness(#[source] getrandom::Error),
}

/// `id=cl9x2` → (`id`, `cl9x2`).
pub fn parse_key(text: &str) -> Result<(String, String), ErasureError> {
    match text.split_once('=') {
        Some((column, value)) if !column.trim().is_empty() => {
            Ok((column.trim().to_owned(), value.to_owned()))
        }
        _ => Err(ErasureError::MalformedKey(text.to_owned())),
    }
}

/// `User` (schema `public`) or `schema.Table`.
pub fn table_name(text: &str) -> QualifiedName {
    match text.trim().split_once('.') {
        Some((schema, name)) => QualifiedName::new(schema, name),
        None => QualifiedName::new("public", text.trim()),
    }
}

/// What an operator asks to erase.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErasureOrder {
    /// `User` or `schema.Table`.
    pub table: String,
    /// Key column → value; rows matching all of them are erased.
    pub key: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// One erasure, opened with the key: what a restore deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub id: String,
    pub time: DateTime<Utc>,
    pub table: QualifiedName,
    pub key: BTreeMap<String, String>,
}

/// A ledger record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    pub id: String,
    #[serde(with = "rfc3339_millis")]
    pub time: DateTime<Utc>,
    pub table: String,
    pub key_id: String,
    /// Hex: the per-record salt of the sealed key.
    pub salt: String,
    /// Hex: the key columns and values, sealed.
    pub sealed_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The record's place in the chain, from 1; absent in records written
    /// before the chain (which keep their old MAC input that way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Hex MAC of the record before it ("" for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_mac: Option<String>,
    /// Hex HMAC-SHA256 of the canonical record without this field.
    #[serde(default)]
    pub mac: String,
}

impl LedgerRecord {
    fn mac_input(&self) -> Vec<u8> {
        let mut unsealed = self.clone();
        unsealed.mac = String::new();
        let mut value = serde_json::to_value(&unsealed).expect("ledger records serialize");
        if let Some(map) = value.as_object_mut() {
            map.remove("mac");
        }
        canonical_document(&value)
    }

    fn mac_key(&self, master: &MasterKey, repository: Option<&str>) -> MetadataKey {
        match (self.seq, repository) {
            (Some(_), Some(repository)) => {
                MetadataKey::derive_for(master, &bound(CHAINED_ERASURE_MAC_INFO, repository))
            }
            _ => MetadataKey::derive_for(master, ERASURE_MAC_INFO),
        }
    }

    /// The record's MAC checks under its key (bound to `repository` for a
    /// chained record) and its sealed key opens.
    fn open(&self, master: &MasterKey, repository: Option<&str>) -> Option<BTreeMap<String, String>> {
        if self.seq.is_some() && repository.is_none() {
            return None;
        }
        let mac = hex::decode(&self.mac).ok()?;
        self.mac_key(master, repository)
            .verify(&self.mac_input(), &mac)
            .ok()?;
        let salt: [u8; SALT_LEN] = hex::decode(&self.salt).ok()?.try_into().ok()?;
        let mut sealed = hex::decode(&self.sealed_key).ok()?;
        let (_, plaintext) = BackupKeys::derive(master, &salt)
            .open_chunk(SEALED_KEY_POSITION, &mut sealed)
            .ok()?;
        serde_json::from_slice(plaintext).ok()
    }
}

fn bound(label: &[u8], repository: &str) -> Vec<u8> {
    let mut info = label.to_vec();
    info.extend_from_slice(repository.as_bytes());
    info
}

/// From which record on a key was the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyEpoch {
    pub key_id: String,
    pub from_seq: u64,
}

/// A ledger object that is not a record, set aside by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetAside {
    pub key: String,
    /// Of the bytes set aside: other bytes at the same key are looked at again.
    pub sha256: String,
    #[serde(with = "rfc3339_millis")]
    pub at: DateTime<Utc>,
    pub by: String,
    pub reason: String,
}

/// The sealed state of the ledger, kept outside the backup store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerHead {
    pub repository_id: String,
    /// Chained records.
    pub count: u64,
    pub last_mac: String,
    /// Records from before the chain, adopted when the head was first
    /// written: how many, and SHA-256 over their ids and MACs.
    pub legacy_count: u64,
    pub legacy_digest: String,
    pub epochs: Vec<KeyEpoch>,
    #[serde(default)]
    pub set_aside: Vec<SetAside>,
    /// The key that sealed this head (the current one when it was written).
    pub key_id: String,
    #[serde(default)]
    pub mac: String,
}

impl LedgerHead {
    fn mac_input(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("ledger heads serialize");
        if let Some(map) = value.as_object_mut() {
            map.remove("mac");
        }
        canonical_document(&value)
    }

    fn seal(&mut self, keyring: &Keyring) {
        let master = keyring.current();
        self.key_id = master.id().to_string();
        self.mac = String::new();
        let key = MetadataKey::derive_for(master, &bound(LEDGER_HEAD_MAC_INFO, &self.repository_id));
        self.mac = hex::encode(key.tag(&self.mac_input()));
    }

    fn open(text: &str, keyring: &Keyring, location: &str) -> Result<Self, ErasureError> {
        let tampered = || ErasureError::HeadTampered {
            location: location.to_owned(),
        };
        let head: Self = serde_json::from_str(text).map_err(|_| tampered())?;
        let master = keyring
            .get(&head.key_id)
            .map_err(|_| ErasureError::HeadKeyRetired {
                location: location.to_owned(),
                key_id: head.key_id.clone(),
            })?;
        let mac = hex::decode(&head.mac).map_err(|_| tampered())?;
        MetadataKey::derive_for(master, &bound(LEDGER_HEAD_MAC_INFO, &head.repository_id))
            .verify(&head.mac_input(), &mac)
            .map_err(|_| tampered())?;
        Ok(head)
    }

    /// The key that was current when record `seq` was added.
    fn key_at(&self, seq: u64) -> Option<&str> {
        self.epochs
            .iter()
            .rev()
            .find(|epoch| epoch.from_seq <= seq)
            .map(|epoch| epoch.key_id.as_str())
    }

    /// Whether two heads say the same (their seal aside).
    fn same_state(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        (a.key_id, a.mac, b.key_id, b.mac) = (String::new(), String::new(), String::new(), String::new());
        a == b
    }
}

/// A chained record, checked.
struct Link {
    seq: u64,
    key: String,
    key_id: String,
    mac: String,
    prev_mac: String,
}

/// The ledger as read and checked, and the head it should have now.
struct LedgerState {
    erasures: Vec<Erasure>,
    repository_id: Option<String>,
    /// The head as stored (checked), if any.
    stored_head: Option<LedgerHead>,
    /// The head that describes the ledger as read, under the current key.
    head: LedgerHead,
}

/// The ledger under `erasures/` in the backup store, anchored by a head
/// kept elsewhere (when configured).
#[derive(Clone)]
pub struct ErasureLedger {
    store: SharedStore,
    head: Option<SharedHeadStore>,
}

impl ErasureLedger {
    pub fn new(store: SharedStore, head: Option<SharedHeadStore>) -> Self {
        Self { store, head }
    }

    fn head_location(&self) -> String {
        self.head
            .as_ref()
            .map_or_else(|| "(none configured)".to_owned(), |head| head.location())
    }

    /// This repository's id, created (once) when there is none yet; a
    /// `repository.json` lost since the head named one is refused.
    async fn ensure_repository_id(&self, state: &LedgerState) -> Result<String, ErasureError> {
        let stored = crate::identity::read(self.store.as_ref()).await?;
        match (&state.repository_id, stored) {
            (_, Some(identity)) => Ok(identity.repository_id),
            (Some(_), None) => Err(ErasureError::RepositoryIdentityMissing),
            (None, None) => Ok(crate::identity::ensure(self.store.as_ref()).await?.repository_id),
        }
    }

    /// Reads every object under `erasures/`, checks each record and the
    /// chain against the head, and works out the head the ledger should
    /// have now. `extra_set_aside` is honoured like the head's own.
    async fn read(
        &self,
        keyring: &Keyring,
        extra_set_aside: &[SetAside],
    ) -> Result<LedgerState, ErasureError> {
        let location = self.head_location();
        let stored_head = match &self.head {
            Some(store) => match store.read().await? {
                Some(text) if !text.trim().is_empty() && text.trim() != "{}" => {
                    Some(LedgerHead::open(&text, keyring, &location)?)
                }
                _ => None,
            },
            None => None,
        };
        let stored_identity = crate::identity::read(self.store.as_ref()).await?;
        let repository_id = match (&stored_head, stored_identity) {
            (Some(head), Some(identity)) if identity.repository_id != head.repository_id => {
                return Err(ErasureError::RepositoryMismatch {
                    stored: identity.repository_id,
                    head: head.repository_id.clone(),
                    location,
                });
            }
            (Some(head), _) => Some(head.repository_id.clone()),
            (None, identity) => identity.map(|identity| identity.repository_id),
        };
        let set_aside: Vec<&SetAside> = stored_head
            .iter()
            .flat_map(|head| head.set_aside.iter())
            .chain(extra_set_aside)
            .collect();
        let configured = || {
            keyring
                .key_ids()
                .map(|id| id.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };

        let mut erasures = Vec::new();
        let mut links = Vec::new();
        let mut legacy: Vec<(String, String)> = Vec::new();
        for info in self.store.list(LEDGER_PREFIX).await? {
            let bytes = get_bytes(self.store.as_ref(), &info.key, MAX_RECORD_BYTES).await?;
            let digest = crate::checksum::sha256_hex(&bytes);
            if set_aside.iter().any(|s| s.key == info.key && s.sha256 == digest) {
                continue;
            }
            let tampered = || ErasureError::Tampered {
                key: info.key.clone(),
            };
            let record: LedgerRecord = serde_json::from_slice(&bytes).map_err(|_| tampered())?;
            if info.key != format!("{LEDGER_PREFIX}{}.json", record.id) {
                return Err(ErasureError::Misplaced {
                    key: info.key.clone(),
                    id: record.id,
                });
            }
            if record.seq.is_some() && repository_id.is_none() {
                return Err(ErasureError::RepositoryIdentityMissing);
            }
            let master = keyring
                .get(&record.key_id)
                .map_err(|_| ErasureError::RecordKeyRetired {
                    key: info.key.clone(),
                    key_id: record.key_id.clone(),
                    configured: configured(),
                })?;
            let key = record
                .open(master, repository_id.as_deref())
                .ok_or_else(tampered)?;
            match record.seq {
                Some(seq) => links.push(Link {
                    seq,
                    key: info.key.clone(),
                    key_id: record.key_id.clone(),
                    mac: record.mac.clone(),
                    prev_mac: record.prev_mac.clone().unwrap_or_default(),
                }),
                None => legacy.push((record.id.clone(), record.mac.clone())),
            }
            erasures.push(Erasure {
                id: record.id,
                time: record.time,
                table: table_name(&record.table),
                key,
            });
        }
        erasures.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));

        // The chain: 1, 2, 3… each naming the MAC of the one before.
        links.sort_by_key(|link| link.seq);
        let mut previous_mac = String::new();
        for (index, link) in links.iter().enumerate() {
            let expected = index as u64 + 1;
            if link.seq != expected {
                let reason = if link.seq < expected {
                    format!("number {} appears twice", link.seq)
                } else {
                    format!("record {expected} is missing before it")
                };
                return Err(ErasureError::ChainBroken {
                    seq: expected,
                    key: link.key.clone(),
                    reason,
                });
            }
            if link.prev_mac != previous_mac {
                return Err(ErasureError::ChainBroken {
                    seq: link.seq,
                    key: link.key.clone(),
                    reason: format!("it does not follow record {}", link.seq - 1),
                });
            }
            previous_mac = link.mac.clone();
        }
        legacy.sort();
        let legacy_digest = crate::checksum::sha256_hex(
            legacy
                .iter()
                .map(|(id, mac)| format!("{id}:{mac}\n"))
                .collect::<String>()
                .as_bytes(),
        );
        let found = links.len() as u64;
        let current = keyring.current_id().as_str().to_owned();

        let head = match &stored_head {
            Some(head) => {
                if legacy.len() as u64 != head.legacy_count || legacy_digest != head.legacy_digest {
                    return Err(ErasureError::LegacyChanged {
                        found: legacy.len() as u64,
                        expected: head.legacy_count,
                        location,
                    });
                }
                if found < head.count {
                    return Err(ErasureError::ChainShorter {
                        found,
                        expected: head.count,
                        location,
                    });
                }
                if head.count > 0 && links[(head.count - 1) as usize].mac != head.last_mac {
                    let link = &links[(head.count - 1) as usize];
                    return Err(ErasureError::ChainBroken {
                        seq: link.seq,
                        key: link.key.clone(),
                        reason: format!("it is not the record {location} sealed"),
                    });
                }
                // Each record under the key current when it was added: the
                // head's epochs up to its count, the current key after it.
                for link in &links {
                    let expected_key = if link.seq <= head.count {
                        head.key_at(link.seq).unwrap_or(head.key_id.as_str())
                    } else {
                        current.as_str()
                    };
                    if link.key_id != expected_key {
                        return Err(ErasureError::NotUnderCurrentKey {
                            key: link.key.clone(),
                            seq: link.seq,
                            found: link.key_id.clone(),
                            expected: expected_key.to_owned(),
                        });
                    }
                }
                let mut next = head.clone();
                if found > head.count && next.epochs.last().is_none_or(|e| e.key_id != current) {
                    next.epochs.push(KeyEpoch {
                        key_id: current.clone(),
                        from_seq: head.count + 1,
                    });
                }
                next.count = found;
                next.last_mac = previous_mac;
                next
            }
            None => {
                if self.head.is_some() {
                    tracing::warn!(
                        records = found,
                        before_the_chain = legacy.len(),
                        "no erasure ledger head yet at {location}: the ledger as it is now is adopted"
                    );
                } else if found + legacy.len() as u64 > 0 {
                    tracing::warn!(
                        "no erasure ledger head configured (BACKUP_LEDGER_HEAD_FILE or BACKUP_LEDGER_HEAD_SECRET_ARN): a deleted newest record would not be noticed"
                    );
                }
                let mut epochs: Vec<KeyEpoch> = Vec::new();
                for link in &links {
                    if epochs.last().is_none_or(|e| e.key_id != link.key_id) {
                        epochs.push(KeyEpoch {
                            key_id: link.key_id.clone(),
                            from_seq: link.seq,
                        });
                    }
                }
                LedgerHead {
                    repository_id: repository_id.clone().unwrap_or_default(),
                    count: found,
                    last_mac: previous_mac,
                    legacy_count: legacy.len() as u64,
                    legacy_digest,
                    epochs,
                    set_aside: Vec::new(),
                    key_id: String::new(),
                    mac: String::new(),
                }
            }
        };
        let mut head = head;
        if head.epochs.last().is_none_or(|e| e.key_id != current) {
            head.epochs.push(KeyEpoch {
                key_id: current,
                from_seq: head.count + 1,
            });
        }
        for extra in extra_set_aside {
            head.set_aside.push(extra.clone());
        }
        Ok(LedgerState {
            erasures,
            repository_id,
            stored_head,
            head,
        })
    }

    /// Seals `head` under the current key and writes it, when there is a
    /// place for it and it says something new (or a rotated-out key sealed it).
    async fn write_head(
        &self,
        keyring: &Keyring,
        stored: Option<&LedgerHead>,
        mut head: LedgerHead,
    ) -> Result<(), ErasureError> {
        let Some(store) = &self.head else {
            return Ok(());
        };
        if head.repository_id.is_empty() {
            // Nothing chained yet and no identity: nothing to anchor.
            return Ok(());
        }
        let unchanged = stored
            .is_some_and(|stored| stored.same_state(&head) && stored.key_id == keyring.current_id().as_str());
        if unchanged {
            return Ok(());
        }
        head.seal(keyring);
        let text = serde_json::to_string_pretty(&head).expect("ledger heads serialize");
        store.write(&text).await?;
        Ok(())
    }

    /// Seals and appends one erasure as the chain's next record, then
    /// advances the head; returns the record (the key sealed).
    pub async fn append(
        &self,
        keyring: &Keyring,
        order: &ErasureOrder,
    ) -> Result<LedgerRecord, ErasureError> {
        if order.table.trim().is_empty()
            || order.key.is_empty()
            || order.key.keys().any(|c| c.trim().is_empty())
        {
            return Err(ErasureError::Incomplete);
        }
        let state = self.read(keyring, &[]).await?;
        let repository_id = self.ensure_repository_id(&state).await?;
        let time = Utc::now();
        let mut random = [0u8; 4 + SALT_LEN];
        getrandom::fill(&mut random).map_err(ErasureError::Randomness)?;
        let (suffix, salt) = random.split_at(4);
        let salt: [u8; SALT_LEN] = salt.try_into().expect("split at the salt length");
        let master = keyring.current();
        let plaintext = Zeroizing::new(serde_json::to_vec(&order.key).expect("keys serialize"));
        let mut sealed = Vec::new();
        BackupKeys::derive(master, &salt)
            .seal_chunk(SEALED_KEY_POSITION, FLAG_LAST_IN_SECTION, &plaintext, &mut sealed)
            .map_err(ErasureError::Randomness)?;
        let mut record = LedgerRecord {
            id: format!("erasure-{}-{}", time.timestamp_millis(), hex::encode(suffix)),
            time,
            table: table_name(&order.table).to_string(),
            key_id: master.id().to_string(),
            salt: hex::encode(salt),
            sealed_key: hex::encode(sealed),
            reason: order.reason.clone(),
            requested_by: order.requested_by.clone(),
            seq: Some(state.head.count + 1),
            prev_mac: Some(state.head.last_mac.clone()),
            mac: String::new(),
        };
        record.mac = hex::encode(
            record
                .mac_key(master, Some(&repository_id))
                .tag(&record.mac_input()),
        );
        let json = serde_json::to_vec_pretty(&record).expect("ledger records serialize");
        // The record first, then the head: a crash between the two leaves a
        // record past the head under the current key, which the next read adopts.
        self.store
            .put(&format!("{LEDGER_PREFIX}{}.json", record.id), Bytes::from(json))
            .await?;
        let mut head = state.head;
        head.repository_id = repository_id;
        head.count += 1;
        head.last_mac = record.mac.clone();
        self.write_head(keyring, state.stored_head.as_ref(), head).await?;
        Ok(record)
    }

    /// Every erasure, oldest first, each authenticated and opened, the
    /// chain checked against the head. Read-only (verify, reports).
    pub async fn load(&self, keyring: &Keyring) -> Result<Vec<Erasure>, ErasureError> {
        Ok(self.read(keyring, &[]).await?.erasures)
    }

    /// As [`Self::load`], then brings the head up to date: adopts a ledger
    /// that had none (or a record an erase wrote before it crashed), and
    /// re-seals it under the current key after a rotation. For the roles
    /// that may write the head (erase and restore).
    pub async fn load_and_anchor(&self, keyring: &Keyring) -> Result<Vec<Erasure>, ErasureError> {
        let state = self.read(keyring, &[]).await?;
        self.write_head(keyring, state.stored_head.as_ref(), state.head)
            .await?;
        Ok(state.erasures)
    }

    /// Break-glass: records in the head that the objects at `keys` (as they
    /// are now) are not part of the ledger, so one junk object does not
    /// refuse every restore forever (no role may delete it). Only objects
    /// that are not an authentic record at their own key can be set aside,
    /// and only if the ledger then reads whole.
    pub async fn set_aside(
        &self,
        keyring: &Keyring,
        keys: &[String],
        by: &str,
        reason: &str,
    ) -> Result<Vec<SetAside>, ErasureError> {
        if self.head.is_none() {
            return Err(ErasureError::SetAsideNeedsHead);
        }
        if reason.trim().is_empty() {
            return Err(ErasureError::SetAsideWithoutReason);
        }
        let identity = crate::identity::read(self.store.as_ref()).await?;
        let mut entries = Vec::new();
        for key in keys {
            if !key.starts_with(LEDGER_PREFIX) || key.contains("..") {
                return Err(ErasureError::NotInLedger { key: key.clone() });
            }
            let bytes = get_bytes(self.store.as_ref(), key, MAX_RECORD_BYTES).await?;
            let authentic = serde_json::from_slice::<LedgerRecord>(&bytes)
                .ok()
                .filter(|record| *key == format!("{LEDGER_PREFIX}{}.json", record.id))
                .is_some_and(|record| {
                    keyring.get(&record.key_id).is_ok_and(|master| {
                        record
                            .open(master, identity.as_ref().map(|i| i.repository_id.as_str()))
                            .is_some()
                    })
                });
            if authentic {
                return Err(ErasureError::AuthenticRecord { key: key.clone() });
            }
            entries.push(SetAside {
                key: key.clone(),
                sha256: crate::checksum::sha256_hex(&bytes),
                at: Utc::now(),
                by: by.to_owned(),
                reason: reason.to_owned(),
            });
        }
        let state = self.read(keyring, &entries).await?;
        let mut head = state.head;
        if head.repository_id.is_empty() {
            head.repository_id = self
                .ensure_repository_id(&LedgerState {
                    erasures: Vec::new(),
                    repository_id: state.repository_id.clone(),
                    stored_head: None,
                    head: head.clone(),
                })
                .await?;
        }
        self.write_head(keyring, state.stored_head.as_ref(), head).await?;
        Ok(entries)
    }
}

/// Splits the ledger for a backup taken at `taken_at` into the erasures
/// that act on it (recorded at or after it was taken: the backup may hold
/// the erased rows) and those that do not (recorded before: the
/// application had deleted the rows when the backup was taken, so a row
/// with that key in it is someone who came later — a person who signed up
/// again, an id a rewound sequence gave out again — and must stay).
pub fn split_by_backup_time(erasures: Vec<Erasure>, taken_at: DateTime<Utc>) -> (Vec<Erasure>, Vec<Erasure>) {
    erasures.into_iter().partition(|erasure| erasure.time >= taken_at)
}

impl Erasure {
    /// `DELETE FROM "public"."User" WHERE "id" = $1::text::integer`, with its
    /// values: each key compared in its column's type (`types`, from the
    /// target; a column missing there is compared as text and fails as
    /// missing), so the column's index serves and `007` finds `7`.
    pub fn delete_statement(&self, types: &BTreeMap<String, String>) -> (String, Vec<String>) {
        let conditions: Vec<String> = self
            .key
            .keys()
            .enumerate()
            .map(|(index, column)| {
                let quoted = crate::postgres::schema::quote_ident(column);
                match types.get(column) {
                    Some(type_name) => format!("{quoted} = ${}::text::{type_name}", index + 1),
                    None => format!("{quoted}::text = ${}", index + 1),
                }
            })
            .collect();
        (
            format!(
                "DELETE FROM {} WHERE {}",
                self.table.quoted(),
                conditions.join(" AND ")
            ),
            self.key.values().cloned().collect(),
        )
    }

    pub fn recorded_at(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_and_tables_parse_and_make_one_parameterised_delete() {
        assert_eq!(parse_key("id=cl9=x").unwrap(), ("id".into(), "cl9=x".into()));
        assert!(parse_key("=x").is_err() && parse_key("id").is_err());
        let erasure = Erasure {
            id: "e".into(),
            time: Utc::now(),
            table: table_name("User"),
            key: BTreeMap::from([("email".into(), "a@b".into()), ("id".into(), "7".into())]),
        };
        let types = BTreeMap::from([("id".to_owned(), "integer".to_owned())]);
        let (sql, values) = erasure.delete_statement(&types);
        assert_eq!(
            sql,
            "DELETE FROM \"public\".\"User\" WHERE \"email\"::text = $1 AND \"id\" = $2::text::integer"
        );
        assert_eq!(values, ["a@b", "7"]);
        assert_eq!(table_name("audit.Event"), QualifiedName::new("audit", "Event"));
    }
}
