//! Tables stored in COPY's binary format (`BACKUP_COPY_FORMAT=binary`,
//! container format version 3): what a binary backup stores, and that it
//! comes back whole — restored on the same server and on a newer one,
//! verified fully and deeply (the deep check re-exports each binary part),
//! and recovered by hand with the recipe of `docs/FORMAT.md`.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use integration_tests::*;
use serde_json::Value;
use support::*;

/// Columns of every kind: `Portable`'s binary form is the same in any
/// database (built-in types, arrays of them, an enum), with the values
/// that are awkward in either format; `Odd`'s names OIDs of this database
/// (an array of an enum, a regclass, a composite) or checks a domain.
const MIXED_TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE "Portable" (
  id bigint PRIMARY KEY, raw bytea, ratio float8, amount numeric, price money,
  at timestamptz, day date, span interval, tags text[], scores int[], doc jsonb,
  feeling mood, flags bit varying, addr inet, note text, uid uuid, stamp timestamp(3));
INSERT INTO "Portable" VALUES
  (1, '\x00ff0a09', 'NaN', 'NaN', 12.34, 'infinity', '-infinity', '1 year 2 mons -3 days 00:00:01.5',
   ARRAY['a', NULL, E'tab\there', E'new\nline', ''], ARRAY[[1,2],[3,NULL]], '{"k": [1, null, "\u00e9"]}',
   'happy', B'1011', '10.0.0.0/8', E'back\\slash \\N', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-12-08 01:02:03.456'),
  (2, '', '-Infinity', '-0.000001', -1, '2026-12-08 01:02:03.456789+00', '2000-02-29', '0',
   '{}', '{}', 'null', 'sad', B'', '::1', '', NULL, '-infinity'),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE "Odd" (id int PRIMARY KEY, moods mood[], kind regclass, amount positive, p pair);
INSERT INTO "Odd" VALUES (1, ARRAY['ok', 'happy']::mood[], '"Portable"', 5, ROW(1, E'x\ty')), (2, NULL, NULL, NULL, NULL);
CREATE TABLE "Ledger" (id bigint PRIMARY KEY, entry text NOT NULL, at timestamptz NOT NULL, memo text);
INSERT INTO "Ledger" SELECT g, md5(g::text), timestamptz '2026-01-01' + g * interval '1 second',
  repeat(chr(65 + g % 26), 100) || E'\t\n\\' FROM generate_series(1, 300000) g;
"#;

/// A table's sections in a backup's metadata, by part number.
fn sections_of<'m>(metadata: &'m Value, table: &str) -> Vec<&'m Value> {
    let mut sections: Vec<&Value> = metadata["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "table" && s["name"] == table)
        .collect();
    sections.sort_by_key(|s| s["part"].as_u64().unwrap_or(0));
    sections
}

#[tokio::test]
async fn a_binary_backup_stores_portable_tables_as_binary_and_comes_back_whole() {
    // Given the car-wash database, tables of awkward values and a ledger
    // large enough to be exported in parts
    let database = TestDatabase::create("binary_copy").await;
    let client = database.client().await;
    load_carwash(&client, 200).await;
    client.batch_execute(MIXED_TYPES).await.unwrap();
    client.batch_execute("VACUUM ANALYZE \"Ledger\"").await.unwrap();
    let source = table_digests(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = vec![("BACKUP_COPY_FORMAT".into(), "binary".into())];

    // When a backup is taken with BACKUP_COPY_FORMAT=binary
    let backup = cli.json(&["create"]).await;
    let id = backup["id"].as_str().unwrap();

    // Then it is format version 3; the portable tables are binary, every
    // part of the ledger included; the table whose columns name this
    // database's OIDs is text
    assert_eq!(backup["formatVersion"], 3, "{backup}");
    let ledger = sections_of(&backup, "Ledger");
    assert!(ledger.len() >= 3, "the ledger is exported in parts: {ledger:?}");
    for table in ["Ledger", "Booking", "User", "Portable"] {
        for section in sections_of(&backup, table) {
            assert_eq!(section["copyFormat"], "binary", "{table}: {section}");
        }
    }
    let odd = sections_of(&backup, "Odd");
    assert_eq!(odd.len(), 1);
    assert!(odd[0].get("copyFormat").is_none(), "{}", odd[0]);

    // And it verifies fully (rows counted in the binary framing) and deeply
    // (the restored copy re-exports to each binary part's digest)
    let full = cli.json(&["verify", "--backup-id", id, "--depth", "full"]).await;
    assert_eq!(full["status"], "passed", "{full}");
    let deep = cli.json(&["verify", "--backup-id", id, "--depth", "deep"]).await;
    assert_eq!(deep["status"], "passed", "{deep}");

    // And restored into an empty database, every row and the schema come back
    let copy = TestDatabase::create("binary_copy_restored").await;
    cli.json(&["restore", "--backup-id", id, "--target-url", &copy.url, "--yes"])
        .await;
    assert_eq!(table_digests(&copy.client().await).await, source);
    let (before, after) = (schema_dump(&database.url), schema_dump(&copy.url));
    assert!(
        before == after,
        "pg_dump differs\n{}",
        difference(&before, &after)
    );

    // And restored on the newest server (binary forms are the same across versions)
    let (_, newest) = servers()
        .into_iter()
        .find(|(version, _)| version == "18")
        .unwrap();
    let newer = TestDatabase::create_on(&newest, "binary_copy_on_18").await;
    cli.json(&["restore", "--backup-id", id, "--target-url", &newer.url, "--yes"])
        .await;
    assert_eq!(table_digests(&newer.client().await).await, source);

    // And the recipe of docs/FORMAT.md joins the ledger's binary parts into
    // one stream that psql loads with COPY … (FORMAT binary)
    let script = recovery_recipe(dir.path());
    let recovered = std::process::Command::new("bash")
        .arg(&script)
        .env("BACKUP", dir.path().join(format!("{id}.backup")))
        .env("MASTER_KEY", KEY)
        .env("TABLE", "public.Ledger")
        .output()
        .unwrap();
    assert!(
        recovered.status.success(),
        "{}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    let stream = dir.path().join("Ledger.copy");
    std::fs::write(&stream, &recovered.stdout).unwrap();
    let by_hand = TestDatabase::create("binary_copy_by_hand").await;
    let by_hand_client = by_hand.client().await;
    by_hand_client
        .batch_execute("CREATE TABLE \"Ledger\" (id bigint PRIMARY KEY, entry text NOT NULL, at timestamptz NOT NULL, memo text)")
        .await
        .unwrap();
    let loaded = std::process::Command::new("psql")
        .args([
            by_hand.url.as_str(),
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!(
                "\\copy \"Ledger\" FROM '{}' WITH (FORMAT binary)",
                stream.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert_eq!(
        table_digests(&by_hand_client).await["public.Ledger"],
        source["public.Ledger"]
    );
}

#[tokio::test]
async fn an_unknown_copy_format_is_refused_with_the_setting_named() {
    // Given BACKUP_COPY_FORMAT set to something else
    let database = TestDatabase::create("binary_copy_setting").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Backupctl::new(&database, dir.path());
    cli.extra_env = vec![("BACKUP_COPY_FORMAT".into(), "csv".into())];
    // When a backup is asked for
    let refused = cli.run(&["create"]).await;
    // Then it is refused, naming the setting and the formats it takes
    assert!(!refused.status.success());
    let cause = cause_of(&refused);
    assert!(
        cause.contains("BACKUP_COPY_FORMAT") && cause.contains("binary"),
        "{cause}"
    );
}
