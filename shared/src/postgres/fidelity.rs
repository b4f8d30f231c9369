//! Fail closed: before any data is exported, every object the capture does
//! not reproduce is listed, and the backup is refused unless the operator
//! accepted that kind of loss (`BACKUP_ALLOW_SCHEMA_LOSS` /
//! `--allow-schema-loss`). A backup never reports success for something
//! that cannot come back.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use super::PostgresError;
use super::schema::QualifiedName;

/// A kind of object the capture does not reproduce. `Operator`,
/// `AccessMethod` and `Conversion` are carried now (`kinds::operators`,
/// `kinds::access_methods`, `kinds::conversions`) and never detected; they
/// stay so that settings and recorded backups naming them still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// A comment in a catalog the capture does not know (a kind a future
    /// server adds); every comment pg_dump writes today is carried.
    Comment,
    /// Carried since kinds/default_privileges.rs; kept as
    /// [`Self::TextSearch`] is.
    DefaultPrivileges,
    /// Carried since large_objects.rs; kept as [`Self::TextSearch`] is.
    LargeObject,
    /// Carried since a child whose parent the backup leaves out records
    /// that parent, checked in the target at restore
    /// (`plan::parents_to_check`); kept as [`Self::TextSearch`] is.
    Inheritance,
    /// Carried since every aggregate kind and window function is
    /// (`catalog::AGGREGATE_DDL`); kept as [`Self::TextSearch`] is.
    Aggregate,
    Operator,
    Cast,
    /// Carried since schema format 4 (kinds/text_search.rs); kept so that
    /// settings and recorded losses naming it still parse.
    TextSearch,
    /// Carried since kinds/event_triggers.rs; kept as [`Self::TextSearch`]
    /// is.
    EventTrigger,
    /// Carried since kinds/publications.rs; kept as [`Self::TextSearch`]
    /// is.
    Publication,
    /// Carried since foreign tables under foreign tables, and those whose
    /// parent the backup leaves out, are; kept as [`Self::TextSearch`] is.
    ForeignTable,
    /// Carried since schema format 6 (the keys and indexes of partitions
    /// in their own tablespaces); kept as [`Self::TextSearch`] is.
    Tablespace,
    Rule,
    ViewTrigger,
    AccessMethod,
    /// Carried since schema format 4 (kinds/foreign_data.rs); kept as
    /// [`Self::TextSearch`] is.
    ForeignData,
    Conversion,
    /// Carried since kinds/subscriptions.rs when the backup role can read
    /// the connection string; detected only when it cannot.
    Subscription,
    /// Carried: the labels of the objects a backup carries
    /// (`security_labels.rs`, schema format 6) and the database's own
    /// (with its properties, `kinds::cluster`, schema format 8); kept as
    /// [`Self::TextSearch`] is.
    SecurityLabel,
}

impl LossKind {
    pub const ALL: [LossKind; 19] = [
        Self::Comment,
        Self::DefaultPrivileges,
        Self::LargeObject,
        Self::Inheritance,
        Self::Aggregate,
        Self::Operator,
        Self::Cast,
        Self::TextSearch,
        Self::EventTrigger,
        Self::Publication,
        Self::ForeignTable,
        Self::Tablespace,
        Self::Rule,
        Self::ViewTrigger,
        Self::AccessMethod,
        Self::ForeignData,
        Self::Conversion,
        Self::Subscription,
        Self::SecurityLabel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Comment => "comment",
            Self::DefaultPrivileges => "default-privileges",
            Self::LargeObject => "large-object",
            Self::Inheritance => "inheritance",
            Self::Aggregate => "aggregate",
            Self::Operator => "operator",
            Self::Cast => "cast",
            Self::TextSearch => "text-search",
            Self::EventTrigger => "event-trigger",
            Self::Publication => "publication",
            Self::ForeignTable => "foreign-table",
            Self::Tablespace => "tablespace",
            Self::Rule => "rule",
            Self::ViewTrigger => "view-trigger",
            Self::AccessMethod => "access-method",
            Self::ForeignData => "foreign-data",
            Self::Conversion => "conversion",
            Self::Subscription => "subscription",
            Self::SecurityLabel => "security-label",
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LossKind {
    type Err = PostgresError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text.trim())
            .ok_or_else(|| PostgresError::UnknownLossKind(text.to_owned()))
    }
}

/// The kinds of loss an operator accepted, e.g. `inheritance,rule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedLoss(BTreeSet<LossKind>);

impl AcceptedLoss {
    pub fn none() -> Self {
        Self::default()
    }

    /// Every kind: for the safety backup before an in-place restore, which
    /// keeps the data (the restore drops no object) and records what it lacks.
    pub fn everything() -> Self {
        Self(LossKind::ALL.into_iter().collect())
    }

    pub fn contains(&self, kind: LossKind) -> bool {
        self.0.contains(&kind)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for AcceptedLoss {
    type Err = PostgresError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// One object a backup would not bring back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uncaptured {
    pub kind: LossKind,
    /// As PostgreSQL describes it (`pg_describe_object`), e.g.
    /// `comment on table "Booking"`.
    pub object: String,
}

impl fmt::Display for Uncaptured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.object, self.kind)
    }
}

/// Every object related to `tables` (or database-wide) that the capture
/// does not reproduce, in a stable order. Runs in the backup's snapshot.
pub async fn uncaptured_objects(
    transaction: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<Uncaptured>, PostgresError> {
    // The backup's tables no longer decide a loss (a child whose parent is
    // left out is carried, with its parent checked at restore).
    let _ = tables;
    // $1: catalogs whose objects the kind families carry with their comments.
    let carried_with_comments: Vec<&str> = super::kinds::ORDERED_CATALOGS.to_vec();
    let queries = [
        // Comments are captured on every kind pg_dump writes `COMMENT ON`
        // for: tables, columns, indexes, constraints, schemas, types (base
        // types too), functions, sequences, views, triggers (on views too),
        // rules, policies, extensions, large objects, collations, extended
        // statistics (of tables, foreign tables and materialized views; a
        // left-out table's go with it, as with `pg_dump -t`), and the kind
        // families' objects (languages, transforms, casts, …). A comment in
        // any other catalog (a kind a future server adds) is detected.
        "SELECT 'comment', 'comment on ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) \
         FROM pg_description d \
         WHERE d.classoid NOT IN ('pg_class'::regclass, 'pg_constraint'::regclass, 'pg_namespace'::regclass, \
                                  'pg_type'::regclass, 'pg_proc'::regclass, 'pg_trigger'::regclass, \
                                  'pg_policy'::regclass, 'pg_database'::regclass, 'pg_am'::regclass, \
                                  'pg_rewrite'::regclass, 'pg_largeobject'::regclass, \
                                  'pg_extension'::regclass, 'pg_collation'::regclass, 'pg_statistic_ext'::regclass) \
           AND d.objoid >= 16384 AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid \
                                               AND e.objid = d.objoid AND e.deptype = 'e') \
           AND d.classoid::regclass::text <> ALL ($1::text[])"
            .to_owned(),
        // Subscriptions are carried (kinds/subscriptions.rs) when their
        // connection string can be read (superuser, as for pg_dump);
        // otherwise they are named from the columns everyone may read.
        "SELECT 'subscription', 'subscription ' || quote_ident(s.subname) FROM pg_subscription s \
         WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND NOT has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT')"
            .to_owned(),
    ];
    let sql = format!(
        "SELECT kind, object FROM ({}) AS uncaptured(kind, object) ORDER BY 1, 2",
        queries.join(" UNION ALL ")
    );
    let rows = transaction
        .query(sql.as_str(), &[&carried_with_comments])
        .await
        .map_err(|source| PostgresError::Query {
            what: "listing what the backup would not capture",
            source,
        })?;
    rows.iter()
        .map(|row| {
            let kind: String = row.get("kind");
            Ok(Uncaptured {
                kind: kind.parse()?,
                object: row.get("object"),
            })
        })
        .collect()
}

/// Refuses the losses nobody accepted; returns the accepted ones, which the
/// backup records.
pub fn refuse_unaccepted(
    found: Vec<Uncaptured>,
    accepted: &AcceptedLoss,
) -> Result<Vec<Uncaptured>, PostgresError> {
    let (allowed, refused): (Vec<Uncaptured>, Vec<Uncaptured>) =
        found.into_iter().partition(|loss| accepted.contains(loss.kind));
    if refused.is_empty() {
        return Ok(allowed);
    }
    let kinds: BTreeSet<&str> = refused.iter().map(|loss| loss.kind.as_str()).collect();
    Err(PostgresError::SchemaLoss {
        objects: refused.iter().map(ToString::to_string).collect(),
        kinds: kinds.into_iter().collect::<Vec<_>>().join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_kinds_parse_from_a_list_and_unknown_ones_are_refused() {
        let accepted: AcceptedLoss = "comment, rule".parse().unwrap();
        assert!(accepted.contains(LossKind::Comment) && accepted.contains(LossKind::Rule));
        assert!(!accepted.contains(LossKind::Inheritance));
        assert!("comments".parse::<AcceptedLoss>().is_err());
        assert!("".parse::<AcceptedLoss>().unwrap().is_empty());
        for kind in LossKind::ALL {
            assert_eq!(kind.as_str().parse::<LossKind>().unwrap(), kind);
        }
    }

    #[test]
    fn a_loss_nobody_accepted_is_refused_by_name_and_kind() {
        let found = vec![
            Uncaptured {
                kind: LossKind::Comment,
                object: "comment on table \"Booking\"".into(),
            },
            Uncaptured {
                kind: LossKind::Inheritance,
                object: "table derived inherits from table base".into(),
            },
        ];
        let error = refuse_unaccepted(found.clone(), &"comment".parse().unwrap()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("table derived inherits from table base"),
            "{message}"
        );
        assert!(
            message.contains("BACKUP_ALLOW_SCHEMA_LOSS=inheritance"),
            "{message}"
        );
        assert!(
            !message.contains("Booking"),
            "accepted losses are not listed as refused: {message}"
        );
        let accepted = refuse_unaccepted(found, &"comment,inheritance".parse().unwrap()).unwrap();
        assert_eq!(accepted.len(), 2);
    }
}
