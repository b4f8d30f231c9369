//! Audit trail: one append-only JSON record per operation, stored under
//! `audit/` beside the backups and logged.

use bytes::Bytes;
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::metadata::{Trigger, rfc3339_millis};
use crate::operations::Operation;
use crate::storage::SharedStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    #[serde(with = "rfc3339_millis")]
    pub time: DateTime<Utc>,
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `failure` whenever anything the operation set out to do was not done.
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Operation-specific facts (tables, rows, target database, deletions).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct AuditTrail {
    store: SharedStore,
}

impl AuditTrail {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Stores and logs the record. A failure to store is logged, not raised:
    /// the operation it describes has already happened.
    pub async fn record(&self, record: AuditRecord) {
        let json = serde_json::to_string(&record).expect("audit records serialize");
        tracing::info!(target: "audit", record = %json, "audit");
        let mut suffix = [0u8; 4];
        let _ = getrandom::fill(&mut suffix);
        let key = format!(
            "audit/{:04}/{:02}/{:02}/{}-{}-{}.json",
            record.time.year(),
            record.time.month(),
            record.time.day(),
            record.time.timestamp_millis(),
            record.operation,
            hex::encode(suffix)
        );
        if let Err(error) = self.store.put(&key, Bytes::from(json)).await {
            tracing::error!(%error, key, "could not store the audit record");
        }
    }
}
