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
    Comment,
    /// Carried since kinds/default_privileges.rs; kept as
    /// [`Self::TextSearch`] is.
    DefaultPrivileges,
    /// Carried since large_objects.rs; kept as [`Self::TextSearch`] is.
    LargeObject,
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

const USER_NAMESPACE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";

fn not_from_extension(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{class}'::regclass AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

/// Every object related to `tables` (or database-wide) that the capture
/// does not reproduce, in a stable order. Runs in the backup's snapshot.
pub async fn uncaptured_objects(
    transaction: &Transaction<'_>,
    tables: &[QualifiedName],
) -> Result<Vec<Uncaptured>, PostgresError> {
    let table_list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    // $2: catalogs whose objects the kind families carry with their comments.
    let carried_with_comments: Vec<&str> = super::kinds::ORDERED_CATALOGS.to_vec();
    // $1: the backup's tables; `chosen` is their oids.
    let chosen = "(SELECT unnest($1::text[])::regclass::oid)";
    let user_class = format!("{USER_NAMESPACE} AND {}", not_from_extension("pg_class", "c.oid"));
    // A foreign table `c` the capture cannot recreate: one with a parent
    // that is not a table of the backup of its kind (partitioned for a
    // partition, ordinary otherwise).
    let refused_foreign = format!(
        "EXISTS (SELECT 1 FROM pg_inherits fi JOIN pg_class fp ON fp.oid = fi.inhparent \
                  WHERE fi.inhrelid = c.oid \
                    AND (fp.relkind <> CASE WHEN c.relispartition THEN 'p' ELSE 'r' END \
                         OR fp.oid NOT IN {chosen}))"
    );
    let refused_foreign_parent = refused_foreign
        .replace("c.oid", "p.oid")
        .replace("c.relispartition", "p.relispartition");
    let queries = [
        // Comments are captured for tables, columns, indexes, constraints,
        // schemas, types, functions, sequences, views, triggers (on views
        // too), rules, policies, extensions, large objects and the
        // extended statistics of the backed-up tables and of foreign
        // tables; a comment on anything else in a user schema is not.
        format!(
            "SELECT 'comment', 'comment on ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) \
             FROM pg_description d \
             WHERE d.classoid NOT IN ('pg_class'::regclass, 'pg_constraint'::regclass, 'pg_namespace'::regclass, \
                                      'pg_type'::regclass, 'pg_proc'::regclass, 'pg_trigger'::regclass, \
                                      'pg_policy'::regclass, 'pg_database'::regclass, 'pg_am'::regclass, \
                                      'pg_rewrite'::regclass, 'pg_largeobject'::regclass, \
                                      'pg_language'::regclass, 'pg_extension'::regclass) \
               AND d.objoid >= 16384 AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid \
                                                   AND e.objid = d.objoid AND e.deptype = 'e') \
               AND d.classoid::regclass::text <> ALL ($2::text[]) \
               AND NOT (d.classoid = 'pg_statistic_ext'::regclass \
                        AND EXISTS (SELECT 1 FROM pg_statistic_ext s JOIN pg_class sc ON sc.oid = s.stxrelid \
                                    WHERE s.oid = d.objoid AND (sc.oid IN {chosen} OR sc.relkind = 'f')))"
        ),
        // A backed-up table inheriting from one outside the backup cannot
        // be recreated with its INHERITS clause. A foreign parent is
        // carried (kinds/foreign_data.rs) unless it is refused below.
        format!(
            "SELECT 'inheritance', pg_describe_object('pg_class'::regclass, i.inhrelid, 0) || ' inherits from ' || \
                    pg_describe_object('pg_class'::regclass, i.inhparent, 0) || ', which is not in the backup' \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE NOT c.relispartition AND i.inhrelid IN {chosen} AND i.inhparent NOT IN {chosen} \
               AND NOT (p.relkind = 'f' AND NOT {refused_foreign_parent})"
        ),
        // Subscriptions are carried (kinds/subscriptions.rs) when their
        // connection string can be read (superuser, as for pg_dump);
        // otherwise they are named from the columns everyone may read.
        "SELECT 'subscription', 'subscription ' || quote_ident(s.subname) FROM pg_subscription s \
         WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND NOT has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT')"
            .to_owned(),
        // Foreign tables are carried (kinds/foreign_data.rs) with their
        // triggers and extended statistics, inheriting from ordinary
        // tables of the backup, inherited from by its tables (whose own
        // rows only are exported, with ONLY), and as partitions of its
        // partitioned tables (whose rows are then read through the other
        // partitions, export.rs); not one whose parent is left out or is
        // not an ordinary table (a foreign table).
        format!(
            "SELECT 'foreign-table', pg_describe_object('pg_class'::regclass, c.oid, 0) || \
                    CASE WHEN c.relispartition THEN ' is a partition of a table the backup leaves out' \
                         ELSE ' inherits from a table the backup leaves out or that is not an ordinary table' END \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'f' AND {user_class} AND {refused_foreign}"
        ),
    ];
    let sql = format!(
        "SELECT kind, object FROM ({}) AS uncaptured(kind, object) ORDER BY 1, 2",
        queries.join(" UNION ALL ")
    );
    let rows = transaction
        .query(sql.as_str(), &[&table_list, &carried_with_comments])
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
