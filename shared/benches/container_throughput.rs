//! Throughput of the container pipeline on realistic booking rows.
//!
//! `cargo bench -p backup-core --bench container_throughput`
//! (set `BENCH_MIB` to change the 256 MiB data size).
//!
//! * `seal`: compress → encrypt → MAC → SHA-256 of the stored bytes.
//! * `open`: authenticate → decrypt → decompress → SHA-256 check per section.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::hint::black_box;
use std::time::Duration;

use backup_core::{
    BackupReader, Compression, ContainerOptions, ContainerWriter, KeyId, Keyring, MasterKey, SectionKind,
};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bongani", "Chen", "Dagny", "Emeka", "Fatima", "Gustavo", "Hana", "Ivan", "Jade",
];
const LAST_NAMES: &[&str] = &[
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Silva",
    "Nakamura",
    "Kowalski",
    "Haddad",
];
const SERVICES: &[&str] = &[
    "Express Wash",
    "Wash & Wax",
    "Interior Deluxe",
    "Full Detail",
    "Ceramic Coat",
];
const STATUSES: &[&str] = &["PENDING", "CONFIRMED", "COMPLETED", "CANCELLED", "NO_SHOW"];
const NOTES: &[&str] = &[
    "please call on arrival",
    "dog hair on back seats",
    "",
    "roof box stays on",
    "customer asked for eco soap",
    "\\N",
    "scratch on rear bumper noted at check-in",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Booking rows in COPY text format, like `COPY "Booking" TO STDOUT` prints.
fn booking_rows(bytes: usize) -> Vec<u8> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(bytes + 512);
    let mut id = 0u64;
    while out.len() < bytes {
        id += 1;
        let (first, last) = (rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES));
        let uuid = format!("{:016x}{:016x}", rng.next(), rng.next());
        let line = format!(
            "{}-{}-4{}-a{}-{}\t{first} {last}\t{}.{}{}@example.com\t+4670{:07}\t{}\t2026-{:02}-{:02} {:02}:{:02}:00+00\t{}\t{}.{:02}\t{}\t2026-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+00\n",
            &uuid[..8],
            &uuid[8..12],
            &uuid[13..16],
            &uuid[17..20],
            &uuid[20..32],
            first.to_lowercase(),
            last.to_lowercase(),
            id % 1000,
            rng.next() % 10_000_000,
            rng.pick(SERVICES),
            rng.next() % 12 + 1,
            rng.next() % 28 + 1,
            rng.next() % 10 + 8,
            (rng.next() % 4) * 15,
            rng.pick(STATUSES),
            rng.next() % 300 + 20,
            rng.next() % 100,
            rng.pick(NOTES),
            rng.next() % 12 + 1,
            rng.next() % 28 + 1,
            rng.next() % 24,
            rng.next() % 60,
            rng.next() % 60,
            rng.next() % 1000,
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn key() -> MasterKey {
    MasterKey::from_bytes(KeyId::new("bench").unwrap(), [0x11; 32])
}

async fn seal(
    data: &[u8],
    level: i8,
    sink: impl tokio::io::AsyncWrite + Unpin,
) -> backup_core::ContainerSummary {
    let options = ContainerOptions {
        compression: Compression::Zstd { level },
        ..ContainerOptions::default()
    };
    let mut writer = ContainerWriter::create(sink, &key(), "backup-1-00000000", options)
        .await
        .unwrap();
    let mut section = writer
        .begin_section(SectionKind::Table, Some("public"), "Booking")
        .unwrap();
    // COPY hands out rows in pieces of tens of KiB; feed it the same way.
    for piece in data.chunks(64 * 1024) {
        section.write(piece).await.unwrap();
    }
    section.finish(0).await.unwrap();
    writer.finish().await.unwrap()
}

fn container_throughput(c: &mut Criterion) {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let data = booking_rows(mib << 20);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let keyring = Keyring::single(key());
    let mut group = c.benchmark_group("container");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1i8, 3] {
        let mut stored = Vec::new();
        let summary = runtime.block_on(seal(&data, level, &mut stored));
        let stored = Bytes::from(stored);
        eprintln!(
            "zstd level {level}: {mib} MiB of booking rows -> {} bytes stored (ratio {:.3})",
            summary.size_bytes,
            data.len() as f64 / summary.size_bytes as f64
        );
        group.bench_function(format!("seal zstd-{level}: compress+encrypt+mac+sha256"), |b| {
            b.iter(|| black_box(runtime.block_on(seal(&data, level, tokio::io::sink()))))
        });
        group.bench_function(format!("open zstd-{level}: mac+decrypt+decompress+sha256"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let reader = BackupReader::open(&stored, &keyring).await.unwrap();
                    let entry = reader.sections()[0].clone();
                    black_box(reader.open_section(&entry).await.unwrap().drain().await.unwrap())
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, container_throughput);
criterion_main!(benches);
