//! Streaming multipart upload with back-pressure, shared by the cloud
//! backends.
//!
//! The writer side is an in-memory pipe; a background task reads it in
//! parts and uploads at most `max_in_flight` parts at a time, so a producer
//! that outruns the network simply waits. An object smaller than one part
//! goes up in a single request. Any failure aborts the multipart upload (no
//! orphaned parts) and breaks the pipe so the producer stops; dropping the
//! upload without completing it aborts too.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use super::{ObjectInfo, ObjectUpload, StorageError};

/// What a backend records about an uploaded part, for completing.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartReceipt {
    pub number: u32,
    pub etag: Option<String>,
    pub checksum_sha256: Option<String>,
}

/// One backend's multipart primitives.
pub(crate) trait PartTarget: Send + 'static {
    /// Uploads a whole (small) object in one request.
    fn put_whole(&mut self, data: Bytes) -> BoxFuture<'_, Result<ObjectInfo, StorageError>>;
    fn begin(&mut self) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Starts part `number` (1-based); the future owns what it needs.
    fn upload_part(
        &mut self,
        number: u32,
        data: Bytes,
    ) -> BoxFuture<'static, Result<PartReceipt, StorageError>>;
    fn complete(&mut self, parts: Vec<PartReceipt>) -> BoxFuture<'_, Result<ObjectInfo, StorageError>>;
    fn abort(&mut self) -> BoxFuture<'_, Result<(), StorageError>>;
}

/// Tuning for [`start_upload`].
#[derive(Debug, Clone, Copy)]
pub struct MultipartSettings {
    /// Size of the first parts; grows by this much every 1,000 parts so an
    /// object of any size fits S3's 10,000-part limit (≈ 440 GiB at 8 MiB).
    pub part_size: usize,
    pub max_in_flight: usize,
}

impl Default for MultipartSettings {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            max_in_flight: 2,
        }
    }
}

impl MultipartSettings {
    fn part_size_for(&self, number: u32) -> usize {
        self.part_size * (1 + (number.saturating_sub(1) / 1000) as usize)
    }
}

enum Command {
    Complete,
    Abort,
}

/// Starts an upload that streams through `target`.
pub(crate) fn start_upload<T: PartTarget>(
    target: T,
    key: String,
    settings: MultipartSettings,
) -> Box<dyn ObjectUpload> {
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let (command, commands) = oneshot::channel();
    let task = tokio::spawn(pump(target, reader, commands, settings));
    Box::new(PumpedUpload {
        writer: Some(writer),
        command: Some(command),
        task: Some(task),
        key,
    })
}

async fn pump<T: PartTarget>(
    mut target: T,
    mut reader: DuplexStream,
    commands: oneshot::Receiver<Command>,
    settings: MultipartSettings,
) -> Result<Option<ObjectInfo>, StorageError> {
    let mut started = false;
    let mut next_number = 1u32;
    let mut in_flight = FuturesUnordered::new();
    let mut receipts = Vec::new();
    // Part buffers come back here once their upload no longer needs them:
    // reusing a few fixed buffers keeps memory flat, where allocating a fresh
    // 8 MiB buffer per part fragmented glibc's heap (92 MiB peak for 1 GiB).
    let mut spare: Vec<BytesMut> = Vec::new();
    let streamed: Result<Bytes, StorageError> = async {
        loop {
            let size = settings.part_size_for(next_number);
            let mut part = spare.pop().unwrap_or_default();
            part.clear();
            part.reserve(size);
            while part.len() < size {
                // Parts in flight are driven while the next one fills, so
                // reading and uploading overlap (the upload futures are lazy:
                // polled only here). `read_buf` is cancel-safe: when an
                // upload finishes first, nothing was read.
                let read = tokio::select! {
                    Some((done, buffer)) = in_flight.next(), if !in_flight.is_empty() => {
                        receipts.push(done?);
                        reclaim(buffer, &mut spare);
                        continue;
                    }
                    read = reader.read_buf(&mut part) => read,
                };
                let read = read.map_err(|source| StorageError::Io {
                    operation: "read the upload stream",
                    key: String::new(),
                    source,
                })?;
                if read == 0 {
                    return Ok(part.freeze());
                }
            }
            if !started {
                target.begin().await?;
                started = true;
            }
            while in_flight.len() >= settings.max_in_flight.max(1) {
                if let Some((done, buffer)) = in_flight.next().await {
                    receipts.push(done?);
                    reclaim(buffer, &mut spare);
                }
            }
            let part = part.freeze();
            let upload = target.upload_part(next_number, part.clone());
            in_flight.push(async move { (upload.await, part) }.boxed());
            next_number += 1;
        }
    }
    .await;

    let tail = match streamed {
        Ok(tail) => tail,
        Err(error) => {
            // Break the pipe so the producer stops, and leave no parts behind.
            drop(reader);
            drop(in_flight);
            if started && let Err(abort) = target.abort().await {
                tracing::warn!(%abort, "aborting the multipart upload failed");
            }
            let _ = commands.await;
            return Err(error);
        }
    };
    match commands.await {
        Ok(Command::Complete) => {}
        // Aborted, or dropped without completing.
        Ok(Command::Abort) | Err(_) => {
            drop(in_flight);
            if started {
                target.abort().await?;
            }
            return Ok(None);
        }
    }
    if !started {
        return target.put_whole(tail).await.map(Some);
    }
    let finished: Result<ObjectInfo, StorageError> = async {
        if !tail.is_empty() {
            let upload = target.upload_part(next_number, tail.clone());
            in_flight.push(async move { (upload.await, tail) }.boxed());
        }
        while let Some((done, _)) = in_flight.next().await {
            receipts.push(done?);
        }
        receipts.sort_by_key(|r| r.number);
        target.complete(std::mem::take(&mut receipts)).await
    }
    .await;
    match finished {
        Ok(info) => Ok(Some(info)),
        Err(error) => {
            if let Err(abort) = target.abort().await {
                tracing::warn!(%abort, "aborting the multipart upload failed");
            }
            Err(error)
        }
    }
}

/// Takes a finished part's buffer back if nothing else holds it.
fn reclaim(buffer: Bytes, spare: &mut Vec<BytesMut>) {
    if let Ok(buffer) = buffer.try_into_mut() {
        spare.push(buffer);
    }
}

struct PumpedUpload {
    writer: Option<DuplexStream>,
    command: Option<oneshot::Sender<Command>>,
    task: Option<tokio::task::JoinHandle<Result<Option<ObjectInfo>, StorageError>>>,
    key: String,
}

impl PumpedUpload {
    fn task_failed(&self, error: tokio::task::JoinError) -> StorageError {
        StorageError::Io {
            operation: "upload",
            key: self.key.clone(),
            source: io::Error::other(error),
        }
    }
}

impl AsyncWrite for PumpedUpload {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.writer.as_mut() {
            Some(writer) => Pin::new(writer).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.writer.as_mut() {
            Some(writer) => Pin::new(writer).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Only flushes: publishing is `complete`'s decision, not the stream's.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl ObjectUpload for PumpedUpload {
    fn complete(mut self: Box<Self>) -> BoxFuture<'static, Result<ObjectInfo, StorageError>> {
        async move {
            if let Some(mut writer) = self.writer.take() {
                let _ = writer.shutdown().await;
            }
            if let Some(command) = self.command.take() {
                let _ = command.send(Command::Complete);
            }
            let task = self
                .task
                .take()
                .expect("the pump runs until completed or aborted");
            match task.await {
                Ok(Ok(Some(info))) => Ok(info),
                Ok(Ok(None)) => Err(StorageError::Io {
                    operation: "complete",
                    key: self.key.clone(),
                    source: io::ErrorKind::Interrupted.into(),
                }),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(self.task_failed(join)),
            }
        }
        .boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        async move {
            drop(self.writer.take());
            if let Some(command) = self.command.take() {
                let _ = command.send(Command::Abort);
            }
            let task = self
                .task
                .take()
                .expect("the pump runs until completed or aborted");
            match task.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(self.task_failed(join)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    /// A backend that records what the pump asks of it; part `fail_part`
    /// fails. Each part's future records when it is first polled, i.e.
    /// when its upload really starts.
    #[derive(Clone, Default)]
    struct Recorder {
        events: Arc<Mutex<Vec<String>>>,
        fail_part: Option<u32>,
    }

    impl Recorder {
        fn events(&self) -> Vec<String> {
            self.events.lock().unwrap().clone()
        }
        fn push(&self, event: String) {
            self.events.lock().unwrap().push(event);
        }
        fn info(size: u64) -> ObjectInfo {
            ObjectInfo {
                key: "backups/x.backup".into(),
                size,
                last_modified: chrono::Utc::now(),
            }
        }
    }

    impl PartTarget for Recorder {
        fn put_whole(&mut self, data: Bytes) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
            self.push(format!("whole {}", data.len()));
            async move { Ok(Self::info(data.len() as u64)) }.boxed()
        }
        fn begin(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
            self.push("begin".into());
            async { Ok(()) }.boxed()
        }
        fn upload_part(
            &mut self,
            number: u32,
            data: Bytes,
        ) -> BoxFuture<'static, Result<PartReceipt, StorageError>> {
            let (recorder, fails) = (self.clone(), self.fail_part == Some(number));
            async move {
                recorder.push(format!("part {number} {}", data.len()));
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fails {
                    return Err(StorageError::Unavailable(format!("part {number} refused")));
                }
                Ok(PartReceipt {
                    number,
                    ..PartReceipt::default()
                })
            }
            .boxed()
        }
        fn complete(&mut self, parts: Vec<PartReceipt>) -> BoxFuture<'_, Result<ObjectInfo, StorageError>> {
            let numbers: Vec<String> = parts.iter().map(|p| p.number.to_string()).collect();
            self.push(format!("complete {}", numbers.join(",")));
            async { Ok(Self::info(0)) }.boxed()
        }
        fn abort(&mut self) -> BoxFuture<'_, Result<(), StorageError>> {
            self.push("abort".into());
            async { Ok(()) }.boxed()
        }
    }

    fn settings(part_size: usize) -> MultipartSettings {
        MultipartSettings {
            part_size,
            max_in_flight: 2,
        }
    }

    #[test]
    fn parts_grow_every_thousand_so_ten_thousand_parts_hold_over_400_gib() {
        let s = settings(8 << 20);
        assert_eq!(s.part_size_for(1), 8 << 20);
        assert_eq!(s.part_size_for(1000), 8 << 20);
        assert_eq!(s.part_size_for(1001), 16 << 20);
        assert_eq!(s.part_size_for(2001), 24 << 20);
        let total: u64 = (1..=10_000).map(|n| s.part_size_for(n) as u64).sum();
        assert!(total > 400 << 30, "{total}");
    }

    #[tokio::test]
    async fn a_part_uploads_while_the_next_one_is_still_being_written() {
        // Given an upload whose writer has filled one part and a little more
        let recorder = Recorder::default();
        let mut upload = start_upload(recorder.clone(), "backups/x.backup".into(), settings(1024));
        upload.write_all(&[7u8; 1100]).await.unwrap();
        // Then part 1 goes up though the stream is still open
        let deadline = Instant::now() + Duration::from_secs(5);
        while !recorder.events().contains(&"part 1 1024".to_owned()) {
            assert!(
                Instant::now() < deadline,
                "part 1 never started: {:?}",
                recorder.events()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // And completing sends the tail as part 2, then commits both
        upload.complete().await.unwrap();
        assert_eq!(
            recorder.events(),
            ["begin", "part 1 1024", "part 2 76", "complete 1,2"]
        );
    }

    #[tokio::test]
    async fn a_part_refused_mid_stream_aborts_the_upload_and_stops_the_writer() {
        // Given a backend that refuses part 2
        let recorder = Recorder {
            fail_part: Some(2),
            ..Recorder::default()
        };
        let mut upload = start_upload(recorder.clone(), "backups/x.backup".into(), settings(1024));
        // When the producer keeps writing
        let mut written = 0usize;
        let broke = loop {
            match upload.write_all(&[1u8; 512]).await {
                Ok(()) => written += 512,
                Err(error) => break error,
            }
            assert!(written < 64 << 20, "the writer was never stopped");
        };
        // Then its pipe breaks, completing reports the refusal, and the
        // multipart upload was aborted, never completed
        assert_eq!(broke.kind(), io::ErrorKind::BrokenPipe);
        let error = upload.complete().await.unwrap_err();
        assert!(error.to_string().contains("part 2 refused"), "{error}");
        let events = recorder.events();
        assert!(events.contains(&"abort".to_owned()), "{events:?}");
        assert!(!events.iter().any(|e| e.starts_with("complete")), "{events:?}");
    }

    #[tokio::test]
    async fn an_object_smaller_than_a_part_goes_up_in_one_request() {
        let recorder = Recorder::default();
        let mut upload = start_upload(recorder.clone(), "backups/x.backup".into(), settings(1024));
        upload.write_all(&[3u8; 100]).await.unwrap();
        upload.complete().await.unwrap();
        assert_eq!(recorder.events(), ["whole 100"]);
    }
}
