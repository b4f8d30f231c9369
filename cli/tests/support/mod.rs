//! The `backupctl` process harness shared by the CLI test suites.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Output;

use integration_tests::*;
use serde_json::Value;

pub const KEY: &str = "3c1f0e9d8b7a6958473625140f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";
pub const OTHER_KEY: &str = "aa1f0e9d8b7a6958473625140f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c";

pub struct Backupctl {
    pub database_url: String,
    pub backup_dir: PathBuf,
    pub key: String,
    pub webhook: Option<(String, String)>,
    pub extra_env: Vec<(String, String)>,
    /// Global flags put before every command (e.g. `--storage s3`).
    pub global_args: Vec<String>,
}

impl Backupctl {
    pub fn new(database: &TestDatabase, backup_dir: &Path) -> Self {
        Self {
            database_url: database.url.clone(),
            backup_dir: backup_dir.to_owned(),
            key: KEY.into(),
            webhook: None,
            extra_env: Vec::new(),
            global_args: Vec::new(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// The command `run` runs, for a test that needs the process itself
    /// (to kill it, or to read its output as it comes).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_backupctl"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.database_url)
            .env("BACKUP_DIR", &self.backup_dir)
            .env("BACKUP_ENCRYPTION_KEY", &self.key)
            .env("BACKUP_SCRATCH_DATABASE_URL", admin_url())
            .env("BACKUP_METRICS", "stderr")
            .env("RUST_LOG", "info")
            .args(&self.global_args)
            .args(args);
        for (name, value) in &self.extra_env {
            command.env(name, value);
        }
        if let Some((url, secret)) = &self.webhook {
            command
                .env("BACKUP_WEBHOOK_URL", url)
                .env("BACKUP_WEBHOOK_SECRET", secret);
        }
        command
    }

    /// Runs, expects success, parses stdout as JSON.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.run(&all).await;
        assert!(
            output.status.success(),
            "backupctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// The one-line cause `backupctl:` prints last.
pub fn cause_of(output: &Output) -> String {
    stderr_of(output)
        .lines()
        .rfind(|l| l.starts_with("backupctl: "))
        .unwrap_or_default()
        .to_owned()
}

/// Every file under `dir`, at any depth, in path order.
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                paths.push(entry.path());
            }
        }
    }
    paths.sort();
    paths
}

/// The names of every file under `dir`, at any depth.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = paths_under(dir)
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn audit_records(dir: &Path) -> Vec<Value> {
    paths_under(&dir.join("audit"))
        .iter()
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect()
}

/// Runs a Python snippet with boto3 / azure-storage-blob; prints JSON.
pub async fn python_json(script: &str, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

pub fn cloud_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for name in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ] {
        let default = match name {
            "AWS_ENDPOINT_URL" => "http://127.0.0.1:5000",
            "AWS_REGION" => "us-east-1",
            _ => "testing",
        };
        env.push((
            name.into(),
            std::env::var(name).unwrap_or_else(|_| default.into()),
        ));
    }
    env
}

/// A tmpfs of `size` mounted on a fresh folder; unmounted on drop.
pub struct SmallDisk {
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Self {
        let mount_point = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test needs root (CI runs as root)"
        );
        Self { mount_point }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mount_point.path())
            .status();
    }
}
