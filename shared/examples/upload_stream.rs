//! Streams a backup container of N MiB (default 1024) of generated data to
//! the configured storage, to measure throughput and peak memory:
//!
//! ```sh
//! eval "$(infra/services.sh env)"
//! BACKUP_STORAGE_TYPE=s3 S3_BACKUP_BUCKET=bench /usr/bin/time -v \
//!   cargo run --release -p backup-core --example upload_stream -- 1024
//! ```

use std::time::Instant;

use backup_core::config::Settings;
use backup_core::{ContainerWriter, KeyId, MasterKey, SectionKind};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let settings = Settings::from_env()?;
    let store = settings.open_store().await?;
    let key = MasterKey::generate(KeyId::new("bench")?)?;
    let started = Instant::now();
    let mut upload = store.begin_upload("backups/backup-1-0000beef.backup").await?;
    let mut writer =
        ContainerWriter::create(&mut upload, &key, "backup-1-0000beef", settings.container).await?;
    let mut section = writer.begin_section(SectionKind::Table, Some("public"), "Booking")?;
    // Pseudo-random bytes: incompressible, so the stored object is as large as the input.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 256 * 1024];
    for _ in 0..mib * 4 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        section.write(&block).await?;
    }
    section.finish(0).await?;
    let summary = writer.finish().await?;
    let info = upload.complete().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "stored {} bytes ({} in storage) to {} in {seconds:.1} s: {:.0} MiB/s",
        summary.size_bytes,
        info.size,
        store.describe(),
        summary.size_bytes as f64 / seconds / (1 << 20) as f64
    );
    store.delete("backups/backup-1-0000beef.backup").await?;
    Ok(())
}
