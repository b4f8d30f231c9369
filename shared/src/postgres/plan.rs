//! What a restore touches and in which order, decided from the backup's
//! schema alone: no connection, so every rule here has a unit test.

use std::collections::{BTreeMap, BTreeSet};

use super::kinds::{CatalogObject, Stage};
use super::schema::{
    DatabaseSchema, Dependency, InheritedParent, NamedDdl, ParentColumn, QualifiedName, Sequence, Table,
    View, quote_ident, quote_literal,
};
use super::{PostgresError, resolve_table_names};

/// The tables a restore loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSelection {
    /// Whether every table of the backup was asked for (views and free
    /// sequences then come back too).
    pub full: bool,
    /// Chosen tables with their own data section, parents before children
    /// by the foreign keys between them.
    pub roots: Vec<QualifiedName>,
    /// Every table of the chosen families: roots and their partitions.
    pub members: BTreeSet<QualifiedName>,
}

/// Resolves `requested` (all when empty) against the backup's tables and
/// orders them for loading. `has_section` says whether the backup holds a
/// table's data.
pub fn select_tables(
    schema: &DatabaseSchema,
    requested: &[String],
    has_section: impl Fn(&QualifiedName) -> bool,
) -> Result<TableSelection, PostgresError> {
    let data_tables: Vec<QualifiedName> = schema.data_tables().map(|t| t.name.clone()).collect();
    let chosen = if requested.is_empty() {
        data_tables
    } else {
        resolve_table_names(requested, &data_tables, "in the backup")?
    };
    if let Some(missing) = chosen.iter().find(|name| !has_section(name)) {
        return Err(PostgresError::MissingTableSection {
            table: missing.display(),
        });
    }
    let roots = dependency_order(schema, &chosen);
    let members = roots
        .iter()
        .flat_map(|root| schema.family_of(root).into_iter().map(|t| t.name.clone()))
        .collect();
    Ok(TableSelection {
        full: requested.is_empty(),
        roots,
        members,
    })
}

/// The parents a restore needs in its target: of each child it creates (a
/// table it creates, or a foreign table, which every restore creates when
/// the target lacks it), the parents it does not create itself — one the
/// backup left out, or a table of the backup this restore leaves out.
/// The restore checks them before any change.
pub fn parents_to_check<'a>(
    schema: &'a DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
    existing: &BTreeSet<QualifiedName>,
) -> Vec<&'a InheritedParent> {
    schema
        .inherited_parents
        .iter()
        .filter(|edge| {
            let child_created =
                edge.child_foreign || (members.contains(&edge.child) && !existing.contains(&edge.child));
            let parent_created =
                edge.parent_in_backup && (edge.parent_foreign || members.contains(&edge.parent));
            child_created && !parent_created
        })
        .collect()
}

/// The kind of the tables [`stand_in_parents`] adds: not the backup's, so
/// neither created by a real restore nor proved against the backup.
pub const STAND_IN_PARENT: &str = "stand-in parent";

/// For a restore into a database made for it and dropped after (deep
/// verification's scratch database), which cannot hold the parents the
/// backup left out: each parent [`parents_to_check`] names for `members`
/// becomes an object the restore creates before its children, an empty
/// table of that name with the columns the backup recorded (partitioned by
/// the recorded key when a child is its partition), so the children are
/// created, loaded and compared instead of refused. The edges it stands in
/// for are taken out of `schema`: the target has nothing to check them
/// against. A partition's parent recorded without its key (a backup taken
/// before the key was recorded) keeps its edge, and the restore refuses it
/// as before. Returns the parents stood in for.
pub fn stand_in_parents(
    schema: &mut DatabaseSchema,
    members: &BTreeSet<QualifiedName>,
) -> Vec<QualifiedName> {
    let no_existing = BTreeSet::new();
    let needed: Vec<InheritedParent> = parents_to_check(schema, members, &no_existing)
        .into_iter()
        .cloned()
        .collect();
    let mut parents: BTreeMap<QualifiedName, Vec<&InheritedParent>> = BTreeMap::new();
    for edge in &needed {
        parents.entry(edge.parent.clone()).or_default().push(edge);
    }
    let mut stood_in = Vec::new();
    for (parent, edges) in parents {
        let partition_key = edges.iter().find_map(|edge| edge.partition_key.clone());
        if edges.iter().any(|edge| edge.partition) && partition_key.is_none() {
            continue;
        }
        let Some(first) = edges.first() else {
            continue;
        };
        let columns: Vec<String> = first
            .columns
            .iter()
            .map(|column| format!("{} {}", quote_ident(&column.name), column.type_name))
            .collect();
        let partitioned = partition_key
            .map(|key| format!(" PARTITION BY {key}"))
            .unwrap_or_default();
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {};\nCREATE TABLE {} ({}){partitioned}",
            quote_ident(&parent.schema),
            parent.quoted(),
            columns.join(", ")
        );
        let key = DatabaseSchema::table_key(&parent);
        let depends_on = column_type_keys(schema, &first.columns);
        for edge in &edges {
            // A foreign child records its parent as a dependency already.
            if !edge.child_foreign {
                schema.dependencies.push(Dependency {
                    dependent: DatabaseSchema::table_key(&edge.child),
                    dependency: key.clone(),
                });
            }
        }
        schema
            .inherited_parents
            .retain(|edge| !(edge.parent == parent && needed.contains(edge)));
        schema.objects.push(CatalogObject {
            kind: STAND_IN_PARENT.to_owned(),
            describe: format!(
                "stand-in for table {}, which the backup left out",
                parent.display()
            ),
            key,
            schema: Some(parent.schema.clone()),
            ddl,
            exists: format!(
                "SELECT pg_catalog.to_regclass({}) IS NOT NULL",
                quote_literal(&parent.quoted())
            ),
            drop_kind: "TABLE".to_owned(),
            drop_name: parent.quoted(),
            stage: Stage::BeforeTables,
            depends_on,
            privileges: Vec::new(),
            relation: None,
        });
        stood_in.push(parent);
    }
    stood_in
}

/// Keys of the backup's types (base types, carried as objects, too) and
/// tables (by their row types) that columns recorded as `format_type`
/// printed them use, arrays included.
fn column_type_keys(schema: &DatabaseSchema, columns: &[ParentColumn]) -> Vec<String> {
    let used: BTreeSet<QualifiedName> = columns
        .iter()
        .filter_map(|column| printed_name(column.type_name.trim_end_matches("[]")))
        .collect();
    let object_types = schema.objects.iter().filter_map(|object| {
        let (schema_name, name) = object.key.strip_prefix("type:")?.split_once('\u{1f}')?;
        Some(QualifiedName::new(schema_name, name))
    });
    let type_keys = schema
        .types
        .iter()
        .map(|user_type| user_type.name.clone())
        .chain(object_types)
        .filter(|name| used.contains(name))
        .map(|name| DatabaseSchema::type_key(&name));
    let table_keys = schema
        .tables
        .iter()
        .filter(|table| used.contains(&table.name))
        .map(|table| DatabaseSchema::table_key(&table.name));
    type_keys
        .chain(table_keys)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `schema.name` as the server prints it (`format_type` under an empty
/// `search_path`: each part double-quoted only when it must be); `None`
/// for anything else (a built-in type, a type with modifiers).
fn printed_name(text: &str) -> Option<QualifiedName> {
    fn identifier(text: &str) -> Option<(String, &str)> {
        let Some(quoted) = text.strip_prefix('"') else {
            let end = text.find('.').unwrap_or(text.len());
            let (name, rest) = text.split_at(end);
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
            return plain.then(|| (name.to_owned(), rest));
        };
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            if c != '"' {
                name.push(c);
            } else if quoted[at + 1..].starts_with('"') {
                name.push('"');
                chars.next();
            } else {
                return Some((name, &quoted[at + 1..]));
            }
        }
        None
    }
    let (schema, rest) = identifier(text)?;
    let (name, rest) = identifier(rest.strip_prefix('.')?)?;
    rest.is_empty().then(|| QualifiedName::new(schema, name))
}

/// Parents before children, by the foreign keys between the chosen tables
/// (a partition's keys count for its root). A cycle is broken in backup
/// order: the load runs with foreign keys deferred or checked afterwards,
/// so any order of a cycle loads.
pub fn dependency_order(schema: &DatabaseSchema, chosen: &[QualifiedName]) -> Vec<QualifiedName> {
    let chosen_set: BTreeSet<&QualifiedName> = chosen.iter().collect();
    let mut depends_on: BTreeMap<&QualifiedName, BTreeSet<QualifiedName>> = BTreeMap::new();
    for table in &schema.tables {
        let root = &schema.data_root(table).name;
        if !chosen_set.contains(root) {
            continue;
        }
        for fk in &table.foreign_keys {
            if let Some(target) = schema.table(&fk.references) {
                let target_root = schema.data_root(target).name.clone();
                if &target_root != root && chosen_set.contains(&target_root) {
                    depends_on.entry(root).or_default().insert(target_root);
                }
            }
        }
    }
    let mut ordered: Vec<QualifiedName> = Vec::with_capacity(chosen.len());
    let mut pending: Vec<&QualifiedName> = chosen.iter().collect();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|name| {
                depends_on
                    .get(name)
                    .is_none_or(|deps| deps.iter().all(|d| ordered.contains(d)))
            })
            // Only a cycle is left: take the first in backup order.
            .unwrap_or(0);
        ordered.push(pending.remove(ready).clone());
    }
    ordered
}

/// One object a restore into a database that lacks it creates before the
/// data is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation<'a> {
    Type(&'a NamedDdl),
    Function(&'a NamedDdl),
    Sequence(&'a Sequence),
    Table(&'a Table),
    /// A view or materialized view (its placeholder when it has one).
    View(&'a View),
    /// An object of a kind family created with the tables
    /// ([`Stage::BeforeTables`]).
    Object(&'a CatalogObject),
}

impl Creation<'_> {
    fn key(&self) -> String {
        match self {
            Self::Type(user_type) => DatabaseSchema::type_key(&user_type.name),
            Self::Function(function) => DatabaseSchema::function_key(function),
            Self::Sequence(sequence) => format!("sequence:{}", sequence.name.quoted()),
            Self::Table(table) => DatabaseSchema::table_key(&table.name),
            Self::View(view) => DatabaseSchema::view_key(&view.name),
            Self::Object(object) => object.key.clone(),
        }
    }

    /// The object in words, for an error naming a dependency cycle.
    fn describe(&self) -> String {
        match self {
            Self::Type(user_type) => format!("type {}", user_type.name.display()),
            Self::Function(function) => format!(
                "function {}",
                function
                    .signature
                    .clone()
                    .unwrap_or_else(|| function.name.display())
            ),
            Self::Sequence(sequence) => format!("sequence {}", sequence.name.display()),
            Self::Table(table) => format!("table {}", table.name.display()),
            Self::View(view) => format!("view {}", view.name.display()),
            Self::Object(object) => object.describe.clone(),
        }
    }
}

/// Types, functions, standalone sequences, the kind families' objects
/// created with the tables, the tables to create and (`with_views`, a full
/// restore) the views, in an order where
/// everything comes after what it depends on ([`DatabaseSchema::dependencies`]
/// and each object's own edges); otherwise kinds in that order and each
/// kind in capture order.
///
/// The cycles pg_dump breaks (`pg_dump_sort.c`) are broken at capture, as
/// pg_dump does, by splitting the part that closes the cycle into an object
/// of its own (a column default, a domain constraint) that comes after the
/// rest. A cycle still left cannot be created by any order: it is an error
/// naming its objects, which the backup reports (never a restore that fails
/// half-way).
pub fn creation_order<'a>(
    schema: &'a DatabaseSchema,
    tables: &[&'a Table],
    with_views: bool,
) -> Result<Vec<Creation<'a>>, PostgresError> {
    let pending: Vec<Creation<'a>> = schema
        .types
        .iter()
        .map(Creation::Type)
        .chain(schema.functions.iter().map(Creation::Function))
        .chain(
            schema
                .objects
                .iter()
                .filter(|o| o.stage == Stage::BeforeTables)
                .map(Creation::Object),
        )
        .chain(
            schema
                .sequences
                .iter()
                .filter(|s| !s.identity)
                .map(Creation::Sequence),
        )
        .chain(tables.iter().copied().map(Creation::Table))
        .chain(schema.views.iter().filter(|_| with_views).map(Creation::View))
        .collect();
    let own_edges = schema.objects.iter().flat_map(|object| {
        object
            .depends_on
            .iter()
            .map(move |dependency| (object.key.as_str(), dependency.as_str()))
    });
    let edges = schema
        .dependencies
        .iter()
        .map(|edge| (edge.dependent.as_str(), edge.dependency.as_str()))
        .chain(own_edges);
    let keys: Vec<String> = pending.iter().map(Creation::key).collect();
    let order = topological_order(&keys, edges).map_err(|cycle| PostgresError::DependencyCycle {
        objects: cycle
            .iter()
            .map(|&index| pending[index].describe())
            .collect::<Vec<_>>()
            .join(" -> "),
    })?;
    Ok(order.into_iter().map(|index| pending[index]).collect())
}

/// Kahn's algorithm over `keys` (indexes into it, in the order returned),
/// stable: of everything whose dependencies are met, the first in `keys`
/// comes first, so objects without edges keep capture order. Edges
/// (`dependent`, `dependency`) naming a key that is not in `keys` (an
/// object not being created) are ignored. When a cycle remains, `Err`
/// holds one cycle's members, each depending on the next and the last on
/// the first.
pub fn topological_order<'k>(
    keys: &[String],
    edges: impl IntoIterator<Item = (&'k str, &'k str)>,
) -> Result<Vec<usize>, Vec<usize>> {
    let index: BTreeMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(position, key)| (key.as_str(), position))
        .collect();
    // Dependencies of each object and, the other way, who waits for it.
    let mut needs: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); keys.len()];
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    for (dependent, dependency) in edges {
        if let (Some(&dependent), Some(&dependency)) = (index.get(dependent), index.get(dependency))
            && dependent != dependency
            && needs[dependent].insert(dependency)
        {
            waiting[dependency].push(dependent);
        }
    }
    let mut unmet: Vec<usize> = needs.iter().map(BTreeSet::len).collect();
    let mut ready: BTreeSet<usize> = (0..keys.len()).filter(|&i| unmet[i] == 0).collect();
    let mut order = Vec::with_capacity(keys.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &dependent in &waiting[next] {
            unmet[dependent] -= 1;
            if unmet[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    if order.len() == keys.len() {
        return Ok(order);
    }
    // Every object left waits for another one left: following the first
    // unmet dependency from any of them must come back round.
    let Some(start) = (0..keys.len()).find(|&i| unmet[i] > 0) else {
        return Ok(order);
    };
    let mut path: Vec<usize> = Vec::new();
    let mut current = start;
    loop {
        if let Some(seen) = path.iter().position(|&i| i == current) {
            return Err(path.split_off(seen));
        }
        path.push(current);
        match needs[current].iter().find(|&&d| unmet[d] > 0) {
            Some(&dependency) => current = dependency,
            // Unreachable by construction (a left object has an unmet
            // dependency); report what was walked rather than loop.
            None => return Err(path),
        }
    }
}

/// Key of a column default that may be created apart from its table
/// (`default:schema␟table␟column`), as `catalog::capture_dependencies`
/// writes it.
pub const DEFAULT_KEY: &str = "default:";
/// Key of a domain's CHECK that may be added apart from its domain
/// (`domain-check:schema␟domain␟constraint`).
pub const DOMAIN_CHECK_KEY: &str = "domain-check:";

/// Key of a plain view's body that may be created apart from the view
/// (`view-body:schema␟view`): the view is then first a placeholder.
pub const VIEW_BODY_KEY: &str = "view-body:";

/// The table, domain or view a split-off part belongs to, and the part's
/// own name (column or constraint; empty for a view's body).
pub fn part_owner(key: &str) -> Option<(QualifiedName, String)> {
    let rest = key
        .strip_prefix(DEFAULT_KEY)
        .or_else(|| key.strip_prefix(DOMAIN_CHECK_KEY))
        .or_else(|| key.strip_prefix(VIEW_BODY_KEY))?;
    let mut fields = rest.splitn(3, '\u{1f}');
    let (schema, owner) = (fields.next()?, fields.next()?);
    let part = fields.next().unwrap_or_default();
    Some((QualifiedName::new(schema, owner), part.to_owned()))
}

fn owner_key(key: &str) -> Option<String> {
    let (owner, _) = part_owner(key)?;
    if key.starts_with(DEFAULT_KEY) {
        Some(DatabaseSchema::table_key(&owner))
    } else if key.starts_with(VIEW_BODY_KEY) {
        Some(DatabaseSchema::view_key(&owner))
    } else {
        Some(DatabaseSchema::type_key(&owner))
    }
}

/// Breaks the cycles pg_dump breaks by splitting an object (`pg_dump_sort.c`
/// `repairTableAttrDefLoop`, `repairDomainConstraintLoop`,
/// `repairViewRuleMultiLoop`): a column default, a domain CHECK or a plain
/// view's body whose dependency leads back to its own table, domain or view
/// (a default calling a function that takes the table's row type, a check
/// calling a function whose body names the domain, a view calling a
/// function that reads the view) becomes an object of its own, created
/// after its owner and after what it calls. Every other part's edges are
/// its owner's, so it is created inline as before.
///
/// Returns the edges, parts rewritten, and the keys of the parts split off.
pub fn break_cycles(edges: Vec<Dependency>) -> (Vec<Dependency>, BTreeSet<String>) {
    let as_owner = |key: &str| owner_key(key).unwrap_or_else(|| key.to_owned());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in &edges {
        graph
            .entry(as_owner(&edge.dependent))
            .or_default()
            .insert(edge.dependency.clone());
    }
    // Whether `to` is reached from `from` following dependencies.
    let reaches = |from: &str, to: &str| {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(at) = stack.pop() {
            if at == to {
                return true;
            }
            if seen.insert(at)
                && let Some(next) = graph.get(at)
            {
                stack.extend(next.iter().map(String::as_str));
            }
        }
        false
    };
    let mut split = BTreeSet::new();
    for edge in &edges {
        if let Some(owner) = owner_key(&edge.dependent)
            && edge.dependency != owner
            && reaches(&edge.dependency, &owner)
        {
            split.insert(edge.dependent.clone());
        }
    }
    let mut rewritten: Vec<Dependency> = Vec::with_capacity(edges.len());
    for edge in edges {
        match owner_key(&edge.dependent) {
            Some(owner) if split.contains(&edge.dependent) => {
                rewritten.push(Dependency {
                    dependent: edge.dependent.clone(),
                    dependency: owner,
                });
                rewritten.push(edge);
            }
            Some(owner) => rewritten.push(Dependency {
                dependent: owner,
                dependency: edge.dependency,
            }),
            None => rewritten.push(edge),
        }
    }
    rewritten.sort_by(|a, b| (&a.dependent, &a.dependency).cmp(&(&b.dependent, &b.dependency)));
    rewritten.dedup();
    (rewritten, split)
}

/// A base type and its input/output functions need each other: the edges
/// from those functions to the type go to its shell instead (created first,
/// `kinds::base_types`), so the functions come between shell and type, as
/// pg_dump orders them. `shells` are the shells' keys.
pub fn shells_first(edges: Vec<Dependency>, shells: &BTreeSet<String>) -> Vec<Dependency> {
    let pairs: BTreeSet<(String, String)> = edges
        .iter()
        .map(|edge| (edge.dependent.clone(), edge.dependency.clone()))
        .collect();
    edges
        .into_iter()
        .map(|edge| {
            let shell = edge
                .dependency
                .strip_prefix("type:")
                .map(|rest| format!("{}{rest}", super::kinds::base_types::SHELL_KEY));
            match shell {
                Some(shell)
                    if shells.contains(&shell)
                        && edge.dependent.starts_with("function:")
                        && pairs.contains(&(edge.dependency.clone(), edge.dependent.clone())) =>
                {
                    Dependency {
                        dependent: edge.dependent,
                        dependency: shell,
                    }
                }
                _ => edge,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::schema::{ForeignKey, SCHEMA_FORMAT_VERSION, TableKind};

    fn name(table: &str) -> QualifiedName {
        QualifiedName::new("public", table)
    }

    fn table(table: &str, kind: TableKind, parent: Option<&str>, references: &[&str]) -> Table {
        Table {
            name: name(table),
            kind,
            parent: parent.map(name),
            create_ddl: String::new(),
            copy_columns: Vec::new(),
            constraints: Vec::new(),
            foreign_keys: references
                .iter()
                .map(|target| ForeignKey {
                    name: format!("{table}_{target}_fkey"),
                    references: name(target),
                    ddl: String::new(),
                })
                .collect(),
            indexes: Vec::new(),
            partition_indexes: Vec::new(),
            triggers: Vec::new(),
            row_security: Vec::new(),
            key_indexes: Vec::new(),
            settings: Vec::new(),
            tablespace: None,
        }
    }

    fn schema(tables: Vec<Table>) -> DatabaseSchema {
        DatabaseSchema {
            format_version: SCHEMA_FORMAT_VERSION,
            database: "carwash".into(),
            server_version: "15".into(),
            server_version_num: 150000,
            extensions: Vec::new(),
            schemas: Vec::new(),
            collations: Vec::new(),
            types: Vec::new(),
            functions: Vec::new(),
            sequences: Vec::new(),
            tables,
            views: Vec::new(),
            objects: Vec::new(),
            domain_constraints: Vec::new(),
            accepted_losses: Vec::new(),
            dependencies: Vec::new(),
            comments: Vec::new(),
            privileges: Vec::new(),
            cluster: None,
            large_objects: Vec::new(),
            security_labels: Vec::new(),
            inherited_parents: Vec::new(),
        }
    }

    fn names(list: &[QualifiedName]) -> Vec<&str> {
        list.iter().map(|n| n.name.as_str()).collect()
    }

    fn named(kind_name: &str, signature: Option<&str>) -> NamedDdl {
        NamedDdl {
            name: name(kind_name),
            ddl: String::new(),
            signature: signature.map(str::to_owned),
        }
    }

    fn key(creation: &Creation<'_>) -> String {
        match creation {
            Creation::Type(t) => format!("type {}", t.name.name),
            Creation::Function(f) => format!("function {}", f.name.name),
            Creation::Sequence(s) => format!("sequence {}", s.name.name),
            Creation::Table(t) => format!("table {}", t.name.name),
            Creation::View(v) => format!("view {}", v.name.name),
            Creation::Object(o) => format!("{} {}", o.kind, o.drop_name),
        }
    }

    #[test]
    fn objects_are_created_after_what_they_depend_on_not_by_kind() {
        // Given a domain whose CHECK calls a function, a function taking a
        // table's row type, and a table using the domain
        let mut schema = schema(vec![
            table("Booking", TableKind::Table, None, &[]),
            table("Payment", TableKind::Table, None, &[]),
        ]);
        schema.types = vec![named("money_amount", None)];
        schema.functions = vec![
            named("booking_total", Some("public.booking_total(\"Booking\")")),
            named("positive", Some("public.positive(numeric)")),
        ];
        let dependency = |dependent: String, dependency: String| crate::postgres::schema::Dependency {
            dependent,
            dependency,
        };
        schema.dependencies = vec![
            dependency(
                DatabaseSchema::type_key(&name("money_amount")),
                "function:public.positive(numeric)".into(),
            ),
            dependency(
                "function:public.booking_total(\"Booking\")".into(),
                DatabaseSchema::table_key(&name("Booking")),
            ),
            dependency(
                DatabaseSchema::table_key(&name("Payment")),
                DatabaseSchema::type_key(&name("money_amount")),
            ),
            // an edge to something not being created is ignored
            dependency(
                DatabaseSchema::table_key(&name("Payment")),
                DatabaseSchema::table_key(&name("Elsewhere")),
            ),
        ];
        let tables: Vec<&Table> = schema.tables.iter().collect();
        // When the creation order is planned
        let order: Vec<String> = creation_order(&schema, &tables, true)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        // Then each object follows what it needs; the rest keep kind order
        assert_eq!(
            order,
            [
                "function positive",
                "type money_amount",
                "table Booking",
                "function booking_total",
                "table Payment"
            ]
        );
    }

    #[test]
    fn without_dependencies_kinds_keep_their_order() {
        let mut schema = schema(vec![table("Booking", TableKind::Table, None, &[])]);
        schema.types = vec![named("Mood", None)];
        schema.functions = vec![named("touch", Some("public.touch()"))];
        let tables: Vec<&Table> = schema.tables.iter().collect();
        let order: Vec<String> = creation_order(&schema, &tables, true)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(order, ["type Mood", "function touch", "table Booking"]);
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn the_sort_is_stable_by_capture_order_among_what_is_ready() {
        // Given e depends on b, c on d, and a, b, d on nothing
        let keys = keys(&["a", "c", "b", "e", "d"]);
        // When sorted
        let order = topological_order(&keys, [("e", "b"), ("c", "d"), ("c", "missing")]).unwrap();
        let order: Vec<&str> = order.iter().map(|&i| keys[i].as_str()).collect();
        // Then each comes after what it needs and otherwise in capture
        // order; an edge to an object not being created is ignored
        assert_eq!(order, ["a", "b", "e", "d", "c"]);
    }

    #[test]
    fn a_cycle_is_named_by_its_members_and_not_by_what_waits_on_it() {
        // Given a -> b -> c -> a, and d waiting on the cycle
        let keys = keys(&["d", "a", "b", "c", "free"]);
        let edges = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")];
        // When sorted
        let cycle = topological_order(&keys, edges).unwrap_err();
        // Then the error holds exactly the cycle, each needing the next
        let mut members: Vec<&str> = cycle.iter().map(|&i| keys[i].as_str()).collect();
        assert_eq!(members.len(), 3, "{members:?}");
        let first = members.iter().position(|&m| m == "a").unwrap();
        members.rotate_left(first);
        assert_eq!(members, ["a", "b", "c"]);
    }

    #[test]
    fn a_cycle_between_a_table_and_a_function_fails_the_plan_naming_both() {
        // Given a table whose (unsplit) default needs a function that takes
        // the table's row type
        let mut schema = schema(vec![table("Booking", TableKind::Table, None, &[])]);
        schema.functions = vec![named("label", Some("public.label(\"Booking\")"))];
        let dependency = |dependent: String, dependency: String| crate::postgres::schema::Dependency {
            dependent,
            dependency,
        };
        schema.dependencies = vec![
            dependency(
                "function:public.label(\"Booking\")".into(),
                DatabaseSchema::table_key(&name("Booking")),
            ),
            dependency(
                DatabaseSchema::table_key(&name("Booking")),
                "function:public.label(\"Booking\")".into(),
            ),
        ];
        let tables: Vec<&Table> = schema.tables.iter().collect();
        // When the creation order is planned
        let error = creation_order(&schema, &tables, true).unwrap_err();
        // Then it is refused, naming both objects
        let message = error.to_string();
        assert!(
            matches!(error, PostgresError::DependencyCycle { .. }),
            "{message}"
        );
        assert!(message.contains("table Booking"), "{message}");
        assert!(
            message.contains("function public.label(\"Booking\")"),
            "{message}"
        );
    }

    fn edge(dependent: &str, dependency: &str) -> Dependency {
        Dependency {
            dependent: dependent.to_owned(),
            dependency: dependency.to_owned(),
        }
    }

    #[test]
    fn a_default_calling_a_function_on_its_tables_row_type_is_split_off_and_set_afterwards() {
        // Given Booking.label's default calling label(Booking), and
        // Booking.note's default calling a function that needs nothing
        let booking = DatabaseSchema::table_key(&name("Booking"));
        let label_default = "default:public\u{1f}Booking\u{1f}label";
        let note_default = "default:public\u{1f}Booking\u{1f}note";
        let edges = vec![
            edge(label_default, "function:public.label(\"Booking\")"),
            edge("function:public.label(\"Booking\")", &booking),
            edge(note_default, "function:public.stamp()"),
        ];
        // When the cycles are broken
        let (edges, split) = break_cycles(edges);
        // Then only the default in the cycle is split, after its table and
        // its function; the other one's edge is its table's
        assert_eq!(split, BTreeSet::from([label_default.to_owned()]));
        assert!(edges.contains(&edge(label_default, &booking)), "{edges:?}");
        assert!(edges.contains(&edge(label_default, "function:public.label(\"Booking\")")));
        assert!(
            edges.contains(&edge(&booking, "function:public.stamp()")),
            "{edges:?}"
        );
        assert_eq!(
            part_owner(label_default),
            Some((name("Booking"), "label".to_owned()))
        );
        // And the plan orders table, function, default without a cycle
        let keys = keys(&[label_default, "function:public.label(\"Booking\")", &booking]);
        let order = topological_order(
            &keys,
            edges
                .iter()
                .map(|e| (e.dependent.as_str(), e.dependency.as_str())),
        )
        .unwrap();
        assert_eq!(order, [2, 1, 0]);
    }

    #[test]
    fn a_domain_check_whose_function_names_the_domain_is_split_off() {
        // Given a domain check calling a function whose body names the domain
        let amount = DatabaseSchema::type_key(&QualifiedName::new("s", "amount"));
        let check = "domain-check:s\u{1f}amount\u{1f}amount_ok";
        let (edges, split) = break_cycles(vec![
            edge(check, "function:s.amount_ok(numeric)"),
            edge("function:s.amount_ok(numeric)", &amount),
        ]);
        // Then the check is split off, after the domain
        assert_eq!(split, BTreeSet::from([check.to_owned()]));
        assert!(edges.contains(&edge(check, &amount)), "{edges:?}");
        // And a check whose function does not need the domain stays inline
        let (edges, split) = break_cycles(vec![edge(check, "function:s.positive(numeric)")]);
        assert!(split.is_empty());
        assert_eq!(edges, [edge(&amount, "function:s.positive(numeric)")]);
    }

    #[test]
    fn a_base_types_input_and_output_functions_come_between_its_shell_and_the_type() {
        // Given a base type naming its input function, which returns it,
        // and another function taking the type
        let plate = "type:s\u{1f}plate";
        let shell = "shell-type:s\u{1f}plate";
        let edges = vec![
            edge(plate, "function:s.plate_in(cstring)"),
            edge("function:s.plate_in(cstring)", plate),
            edge("function:s.describe(s.plate)", plate),
            edge(plate, shell),
        ];
        // When the shells are put first
        let edges = shells_first(edges, &BTreeSet::from([shell.to_owned()]));
        // Then only the input function waits for the shell, and the order
        // is shell, input function, type, the other function
        assert!(
            edges.contains(&edge("function:s.plate_in(cstring)", shell)),
            "{edges:?}"
        );
        assert!(
            edges.contains(&edge("function:s.describe(s.plate)", plate)),
            "{edges:?}"
        );
        let keys = keys(&[
            plate,
            "function:s.plate_in(cstring)",
            "function:s.describe(s.plate)",
            shell,
        ]);
        let order = topological_order(
            &keys,
            edges
                .iter()
                .map(|e| (e.dependent.as_str(), e.dependency.as_str())),
        )
        .unwrap();
        assert_eq!(order, [3, 1, 0, 2]);
    }

    #[test]
    fn parents_load_before_the_tables_that_reference_them() {
        // Given Booking → User and Booking → Service, listed child first
        let schema = schema(vec![
            table("Booking", TableKind::Table, None, &["User", "Service"]),
            table("User", TableKind::Table, None, &[]),
            table("Service", TableKind::Table, None, &[]),
        ]);
        // When the whole backup is selected
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        // Then both parents come before Booking
        assert_eq!(names(&selection.roots), ["User", "Service", "Booking"]);
        assert!(selection.full);
    }

    #[test]
    fn a_foreign_key_cycle_across_two_tables_loads_both_once_in_backup_order() {
        // Given Customer ⇄ Address (each references the other)
        let schema = schema(vec![
            table("Customer", TableKind::Table, None, &["Address"]),
            table("Address", TableKind::Table, None, &["Customer"]),
            table("Invoice", TableKind::Table, None, &["Customer"]),
        ]);
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        // Then the cycle is broken at the first table, each loads once, and
        // what depends on the cycle still comes after it
        assert_eq!(names(&selection.roots), ["Customer", "Address", "Invoice"]);
    }

    #[test]
    fn partitions_travel_with_their_root_and_their_keys_order_it() {
        // Given a partitioned Booking whose partition references User
        let schema = schema(vec![
            table("Booking", TableKind::Partitioned, None, &[]),
            table("Booking_2026", TableKind::Partition, Some("Booking"), &["User"]),
            table("User", TableKind::Table, None, &[]),
        ]);
        let selection = select_tables(&schema, &[], |_| true).unwrap();
        assert_eq!(names(&selection.roots), ["User", "Booking"]);
        assert!(selection.members.contains(&name("Booking_2026")));
        // And a partition cannot be chosen on its own
        assert!(select_tables(&schema, &["Booking_2026".into()], |_| true).is_err());
    }

    #[test]
    fn a_partial_selection_orders_only_what_was_asked_and_needs_every_section() {
        let schema = schema(vec![
            table("Booking", TableKind::Table, None, &["User"]),
            table("User", TableKind::Table, None, &[]),
            table("Service", TableKind::Table, None, &[]),
        ]);
        let selection = select_tables(&schema, &["Booking".into(), "User".into()], |_| true).unwrap();
        assert_eq!(names(&selection.roots), ["User", "Booking"]);
        assert!(!selection.full);
        assert!(!selection.members.contains(&name("Service")));
        // When the backup lacks a chosen table's data, the plan is refused
        let error = select_tables(&schema, &["User".into()], |n| n.name != "User").unwrap_err();
        assert!(error.to_string().contains("User"), "{error}");
    }

    #[test]
    fn a_parent_the_restore_does_not_create_is_checked_for_each_child_it_creates() {
        // Given a child whose parent the backup left out, one whose parent is
        // a table of the backup, one under a foreign table, and a foreign
        // table under a table the backup left out
        let edge = |child: &str, child_foreign: bool, parent: &str, in_backup: bool, parent_foreign: bool| {
            InheritedParent {
                child: name(child),
                child_foreign,
                partition: false,
                parent: name(parent),
                parent_in_backup: in_backup,
                parent_foreign,
                columns: Vec::new(),
                partition_key: None,
            }
        };
        let mut schema = schema(vec![
            table("orphan", TableKind::Table, None, &[]),
            table("base", TableKind::Table, None, &[]),
            table("derived", TableKind::Table, None, &[]),
            table("local_child", TableKind::Table, None, &[]),
        ]);
        schema.inherited_parents = vec![
            edge("orphan", false, "left_out", false, false),
            edge("derived", false, "base", true, false),
            edge("local_child", false, "remote", true, true),
            edge("remote_child", true, "outside", false, false),
        ];
        let set = |list: &[&str]| list.iter().map(|t| name(t)).collect::<BTreeSet<_>>();
        let checked = |members: &[&str], existing: &[&str]| {
            parents_to_check(&schema, &set(members), &set(existing))
                .iter()
                .map(|edge| format!("{}<{}", edge.child.name, edge.parent.name))
                .collect::<Vec<_>>()
        };
        // When every table is restored into an empty database, Then the
        // parents the backup left out are checked, not those it creates
        assert_eq!(
            checked(&["orphan", "base", "derived", "local_child"], &[]),
            ["orphan<left_out", "remote_child<outside"]
        );
        // When only the child of a table of the backup is restored, Then its
        // parent is checked too; a foreign parent comes with every restore
        assert_eq!(
            checked(&["derived", "local_child"], &[]),
            ["derived<base", "remote_child<outside"]
        );
        // When the child already exists (it is not created), Then nothing is
        // checked for it
        assert_eq!(checked(&["orphan"], &["orphan"]), ["remote_child<outside"]);
    }

    #[test]
    fn names_read_back_as_the_server_prints_them() {
        let parsed = |text: &str| printed_name(text).map(|n| (n.schema, n.name));
        assert_eq!(parsed("public.mood"), Some(("public".into(), "mood".into())));
        assert_eq!(
            parsed(r#""My ""App"""."Mood""#),
            Some(("My \"App\"".into(), "Mood".into()))
        );
        for built_in in [
            "integer",
            "character varying(20)",
            "Public.mood",
            "public.mood.x",
            "\"open",
        ] {
            assert_eq!(parsed(built_in), None, "{built_in}");
        }
    }

    #[test]
    fn a_scratch_restore_stands_in_for_each_parent_the_backup_left_out_before_its_children() {
        // Given a child under a parent the backup left out whose columns
        // use a type of the backup, a second child under the same parent, a
        // foreign partition of a partitioned table left out (its key
        // recorded), one of a partitioned table recorded before keys were,
        // and a child under a table of the backup
        let column = |name: &str, type_name: &str| ParentColumn {
            name: name.into(),
            type_name: type_name.into(),
        };
        let edge =
            |child: &str, child_foreign: bool, parent: &str, partition_key: Option<&str>| InheritedParent {
                child: name(child),
                child_foreign,
                partition: partition_key.is_some() || parent == "old_partitioned",
                parent: if parent == "base" {
                    name(parent)
                } else {
                    QualifiedName::new("archive", parent)
                },
                parent_in_backup: parent == "base",
                parent_foreign: false,
                columns: vec![column("id", "integer"), column("Mood", "public.mood[]")],
                partition_key: partition_key.map(str::to_owned),
            };
        let mut schema = schema(vec![
            table("orphan", TableKind::Table, None, &[]),
            table("sibling", TableKind::Table, None, &[]),
            table("base", TableKind::Table, None, &[]),
            table("derived", TableKind::Table, None, &[]),
        ]);
        schema.types = vec![named("mood", None), named("unused", None)];
        schema.inherited_parents = vec![
            edge("orphan", false, "left_out", None),
            edge("sibling", false, "left_out", None),
            edge("remote_2020", true, "measurement", Some("RANGE (id)")),
            edge("remote_old", true, "old_partitioned", None),
            edge("derived", false, "base", None),
        ];
        let members: BTreeSet<QualifiedName> = ["orphan", "sibling", "base", "derived"]
            .iter()
            .map(|t| name(t))
            .collect();
        // When the restore into a scratch database stands in for them
        let stood_in = stand_in_parents(&mut schema, &members);
        // Then each parent left out is stood in for once, the one whose key
        // was not recorded excepted, with the recorded columns (and key)
        let stood_in: Vec<&str> = stood_in.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(stood_in, ["left_out", "measurement"]);
        let stand_in = |parent: &str| {
            schema
                .objects
                .iter()
                .find(|o| {
                    o.kind == STAND_IN_PARENT && o.drop_name == QualifiedName::new("archive", parent).quoted()
                })
                .unwrap()
        };
        assert_eq!(
            stand_in("left_out").ddl,
            "CREATE SCHEMA IF NOT EXISTS \"archive\";\n\
             CREATE TABLE \"archive\".\"left_out\" (\"id\" integer, \"Mood\" public.mood[])"
        );
        assert!(stand_in("measurement").ddl.ends_with(") PARTITION BY RANGE (id)"));
        // And it comes after the type its columns use, before its children
        let schema_ref = &schema;
        let tables: Vec<&Table> = schema_ref.tables.iter().collect();
        let order: Vec<String> = creation_order(schema_ref, &tables, false)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        let at = |k: &str| order.iter().position(|o| o == k).unwrap();
        let left_out = r#"stand-in parent "archive"."left_out""#;
        assert!(at("type mood") < at(left_out), "{order:?}");
        for child in ["table orphan", "table sibling"] {
            assert!(at(left_out) < at(child), "{order:?}");
        }
        // And only the edges it could not stand in for are left to check
        let left: Vec<&str> = schema
            .inherited_parents
            .iter()
            .map(|e| e.child.name.as_str())
            .collect();
        assert_eq!(left, ["remote_old", "derived"]);
        let checked: Vec<&str> = parents_to_check(&schema, &members, &BTreeSet::new())
            .iter()
            .map(|e| e.child.name.as_str())
            .collect();
        assert_eq!(checked, ["remote_old"]);
    }
}
