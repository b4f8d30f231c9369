//! A fault-injecting HTTP proxy for storage tests: it sits between a client
//! and the S3 stand-in (moto) on loopback and, for the requests a rule
//! matches, answers with an error status, resets the connection, delays
//! the answer, or forwards the request and drops the answer.
//!
//! Each connection carries one request (the proxy asks both ends for
//! `Connection: close`), so a fault never leaks into the next request. The
//! proxy is bounded: it stops after [`MAX_CONNECTIONS`] connections, and
//! every connection after [`CONNECTION_LIFETIME`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MAX_CONNECTIONS: usize = 20_000;
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
const MAX_HEAD: usize = 64 * 1024;

/// What happens to a matched request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, answer with this status and an S3 error body.
    Status(u16),
    /// Close the connection with a TCP reset as soon as the head is read.
    Reset,
    /// Wait, then forward as usual.
    Delay(Duration),
    /// Forward the request (the server acts on it), then close the
    /// connection without passing the answer on.
    DropResponse,
}

/// Which requests a rule applies to, and how often it fires.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub method: &'static str,
    /// The request path (before `?`) must contain this.
    pub path_contains: String,
    /// Each must be a `name=value` pair or a bare `name` of the query.
    pub query: Vec<String>,
    pub fault: Fault,
    /// Matching requests let through before it fires.
    pub skip: usize,
    /// How many matching requests it fires for (`usize::MAX`: every one).
    pub times: usize,
}

impl FaultRule {
    /// The upload of part `number` of a multipart upload.
    pub fn upload_part(number: u32, fault: Fault, times: usize) -> Self {
        Self {
            method: "PUT",
            path_contains: String::new(),
            query: vec![format!("partNumber={number}"), "uploadId".into()],
            fault,
            skip: 0,
            times,
        }
    }

    /// The request that completes a multipart upload.
    pub fn complete_upload(fault: Fault, times: usize) -> Self {
        Self {
            method: "POST",
            path_contains: String::new(),
            query: vec!["uploadId".into()],
            fault,
            skip: 0,
            times,
        }
    }

    /// Reads (GET, whole or ranged) of objects whose key contains
    /// `path_contains`, after the first `skip` of them went through.
    pub fn read_of(path_contains: &str, skip: usize, fault: Fault, times: usize) -> Self {
        Self {
            method: "GET",
            path_contains: path_contains.to_owned(),
            query: Vec::new(),
            fault,
            skip,
            times,
        }
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        method == self.method
            && path.contains(&self.path_contains)
            && self.query.iter().all(|wanted| {
                query.split('&').any(|pair| {
                    pair == wanted || pair.split_once('=').is_some_and(|(name, _)| name == wanted)
                })
            })
    }
}

/// One request as the proxy saw it, and the fault it got (if any).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct State {
    rules: Vec<FaultRule>,
    seen: Vec<SeenRequest>,
}

pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`
    /// (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the upstream is http://ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serve(client, upstream, state)).await;
                });
            }
        });
        Self { url, state, task }
    }

    /// In front of the S3 stand-in that `AWS_ENDPOINT_URL` names.
    pub async fn in_front_of_s3() -> Self {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
        Self::start(&endpoint).await
    }

    pub fn inject(&self, rule: FaultRule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests got a fault.
    pub fn faults_fired(&self) -> usize {
        self.seen().iter().filter(|r| r.fault.is_some()).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    // The request head, and whatever body bytes came with it.
    let mut buffer = Vec::with_capacity(8192);
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > MAX_HEAD {
            return Ok(());
        }
        let mut chunk = [0u8; 8192];
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let content_length: usize = lines
        .clone()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);

    let fault = {
        let mut state = state.lock().unwrap();
        let fault = state
            .rules
            .iter_mut()
            .find(|rule| rule.times > 0 && rule.matches(&method, path, query))
            .and_then(|rule| {
                if rule.skip > 0 {
                    rule.skip -= 1;
                    return None;
                }
                rule.times = rule.times.saturating_sub(1);
                Some(rule.fault)
            });
        state.seen.push(SeenRequest {
            method: method.clone(),
            target: target.clone(),
            fault,
        });
        fault
    };

    match fault {
        Some(Fault::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            return Ok(());
        }
        Some(Fault::Status(status)) => {
            // Read the body first, so the client sees an answer, not a broken pipe.
            let mut remaining = content_length.saturating_sub(buffer.len() - head_end);
            let mut sink = [0u8; 64 * 1024];
            while remaining > 0 {
                let read = client.read(&mut sink[..remaining.min(64 * 1024)]).await?;
                if read == 0 {
                    break;
                }
                remaining -= read;
            }
            let code = if status == 503 {
                "SlowDown"
            } else {
                "InternalError"
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>"
            );
            let response = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            client.shutdown().await?;
            return Ok(());
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::DropResponse) | None => {}
    }

    // Forward with `Connection: close`, so this connection carries one request.
    let mut forwarded = String::with_capacity(head.len() + 20);
    forwarded.push_str(request_line);
    forwarded.push_str("\r\n");
    for line in head.split("\r\n").skip(1) {
        if line.is_empty() {
            continue;
        }
        let name = line.split(':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&buffer[head_end..]).await?;

    if fault == Some(Fault::DropResponse) {
        // Pass the body on, wait for the server to answer, then vanish.
        let mut remaining = content_length.saturating_sub(buffer.len() - head_end);
        let mut chunk = [0u8; 64 * 1024];
        while remaining > 0 {
            let read = client.read(&mut chunk[..remaining.min(64 * 1024)]).await?;
            if read == 0 {
                break;
            }
            server.write_all(&chunk[..read]).await?;
            remaining -= read;
        }
        let mut first = [0u8; 1];
        let _ = server.read(&mut first).await?;
        client.set_zero_linger()?;
        return Ok(());
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_method_and_query_pairs_exactly() {
        let rule = FaultRule::upload_part(2, Fault::Reset, 1);
        assert!(rule.matches("PUT", "/b/k", "x-id=UploadPart&partNumber=2&uploadId=abc"));
        assert!(!rule.matches("PUT", "/b/k", "x-id=UploadPart&partNumber=20&uploadId=abc"));
        assert!(!rule.matches("GET", "/b/k", "partNumber=2&uploadId=abc"));
        assert!(!rule.matches("PUT", "/b/k", "partNumber=2"));
        let complete = FaultRule::complete_upload(Fault::Status(500), 1);
        assert!(complete.matches("POST", "/b/k", "uploadId=abc"));
        assert!(!complete.matches("POST", "/b/k", "uploads"));
        let read = FaultRule::read_of(".backup", 2, Fault::Reset, 1);
        assert!(read.matches("GET", "/b/backups/x.backup", "x-id=GetObject"));
        assert!(!read.matches("GET", "/b/metadata/x.json", ""));
    }
}
