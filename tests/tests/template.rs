//! template.yaml passes cfn-lint and our own checks for what cfn-lint
//! misses (runtime, architecture, events, policies) — and those checks fail
//! on a template that gets them wrong.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn tool(name: &str) -> PathBuf {
    let python = PathBuf::from(integration_tests::python());
    python.parent().unwrap().join(name)
}

fn check(template: &Path) -> (bool, String) {
    let output = Command::new(integration_tests::python())
        .arg(repo().join("infra/check_template.py"))
        .arg(template)
        .output()
        .expect("the venv from infra/services.sh install");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[test]
fn the_template_passes_cfn_lint() {
    let output = Command::new(tool("cfn-lint"))
        .arg(repo().join("template.yaml"))
        .output()
        .expect("cfn-lint in the venv");
    assert!(
        output.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_template_passes_our_own_checks() {
    let (ok, report) = check(&repo().join("template.yaml"));
    assert!(ok, "{report}");
}

#[test]
fn our_checks_catch_what_cfn_lint_misses() {
    let original = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    // Copies beside the real one, so the checks can find functions/*/Cargo.toml.
    for (what, from, to, says) in [
        (
            "runtime",
            "Runtime: provided.al2023",
            "Runtime: provided.al2",
            "Runtime must be provided.al2023",
        ),
        (
            "architecture",
            "Architectures: [arm64]",
            "Architectures: [x86_64]",
            "Architectures must be [arm64]",
        ),
        (
            "S3 event name",
            "Events: s3:ObjectCreated:*",
            "Events: s3:ObjectCreate:*",
            "not S3 ObjectCreated event names",
        ),
        (
            "hourly schedule",
            "Schedule: rate(1 hour)",
            "Schedule: rate(6 hours)",
            "rate(1 hour) missing",
        ),
        (
            "create may delete",
            "Action: [s3:PutObject, s3:AbortMultipartUpload]\n              Resource:\n                - !Sub \"${BackupBucket.Arn}/backups/*\"\n                - !Sub \"${BackupBucket.Arn}/metadata/*\"\n                - !Sub \"${BackupBucket.Arn}/audit/*\"\n            - Sid: ReadKeyringAndDatabaseSecrets",
            "Action: [s3:PutObject, s3:AbortMultipartUpload, s3:DeleteObject]\n              Resource:\n                - !Sub \"${BackupBucket.Arn}/backups/*\"\n                - !Sub \"${BackupBucket.Arn}/metadata/*\"\n                - !Sub \"${BackupBucket.Arn}/audit/*\"\n            - Sid: ReadKeyringAndDatabaseSecrets",
            "must not delete",
        ),
        (
            "binary",
            "Binary: verify",
            "Binary: verifier",
            "BuildProperties.Binary",
        ),
        (
            "MFA",
            "aws:MultiFactorAuthPresent: \"true\"",
            "aws:MultiFactorAuthPresent: \"false\"",
            "MultiFactorAuthPresent",
        ),
    ] {
        assert!(
            original.contains(from),
            "{what}: the template no longer contains {from:?}"
        );
        let broken = repo().join(format!(".template-check-{}.yaml", what.replace(' ', "-")));
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let (ok, report) = check(&broken);
        std::fs::remove_file(&broken).unwrap();
        assert!(!ok, "{what}: a broken template passed");
        assert!(report.contains(says), "{what}: {report}");
    }
}
