//! Metrics as CloudWatch Embedded Metric Format (EMF) log lines: in Lambda
//! CloudWatch turns each stdout line into metrics with no agent and no API
//! call; elsewhere (an ECS task) the CloudWatch agent does, from a file or
//! its TCP listener.

use std::io::Write;

use chrono::Utc;
use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "PgBackup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
    Bytes,
    Count,
    Percent,
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Milliseconds => "Milliseconds",
            Self::Seconds => "Seconds",
            Self::Bytes => "Bytes",
            Self::Count => "Count",
            Self::Percent => "Percent",
            Self::None => "None",
        }
    }
}

/// Where EMF lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSink {
    /// Lambda: stdout is the function's log stream.
    Stdout,
    Stderr,
    /// Appended to a file, e.g. one the CloudWatch agent tails.
    File(std::path::PathBuf),
    /// Sent to the CloudWatch agent's EMF listener (`tcp:127.0.0.1:25888`,
    /// a sidecar of an ECS task: CloudWatch does not extract EMF from the
    /// lines the awslogs driver forwards).
    Tcp(String),
    Disabled,
}

impl MetricsSink {
    /// `BACKUP_METRICS`: `stdout`, `stderr`, `off`, `file:PATH` or `tcp:HOST:PORT`.
    pub fn from_setting(value: &str) -> Option<Self> {
        match value {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "off" => Some(Self::Disabled),
            other => match other.strip_prefix("tcp:") {
                Some(address) => address
                    .rsplit_once(':')
                    .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                    .map(|_| Self::Tcp(address.to_owned())),
                None => other
                    .strip_prefix("file:")
                    .filter(|path| !path.is_empty())
                    .map(|path| Self::File(path.into())),
            },
        }
    }
}

/// One EMF document: metrics for one operation.
#[derive(Debug, Clone)]
pub struct MetricSet {
    operation: &'static str,
    values: Vec<(&'static str, f64, Unit)>,
}

impl MetricSet {
    pub fn new(operation: &'static str) -> Self {
        Self {
            operation,
            values: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: f64, unit: Unit) -> Self {
        self.values.push((name, value, unit));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The EMF JSON line.
    pub fn to_emf(&self) -> String {
        let mut document = Map::new();
        document.insert(
            "_aws".into(),
            json!({
                "Timestamp": Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Operation"]],
                    "Metrics": self.values.iter()
                        .map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        document.insert("Operation".into(), Value::from(self.operation));
        for (name, value, _) in &self.values {
            document.insert((*name).into(), json!(value));
        }
        Value::Object(document).to_string()
    }

    pub fn emit(&self, sink: &MetricsSink) {
        let line = self.to_emf();
        let written = match sink {
            MetricsSink::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            MetricsSink::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
            MetricsSink::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| writeln!(file, "{line}")),
            MetricsSink::Tcp(address) => send_tcp(address, &line),
            MetricsSink::Disabled => Ok(()),
        };
        if let Err(error) = written {
            // A lost metric must not fail the operation it measures.
            tracing::warn!(%error, "could not write a metrics line");
        }
    }
}

/// One EMF line to a TCP listener, on a connection of its own. Blocking,
/// but a few lines per operation to an agent beside the process, each
/// bounded by two-second timeouts: not worth a task of its own.
fn send_tcp(address: &str, line: &str) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let target = address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to nothing"),
        )
    })?;
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    writeln!(stream, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_sink_sends_each_line_to_the_agents_listener() {
        use std::io::BufRead;
        assert_eq!(
            MetricsSink::from_setting("tcp:127.0.0.1:25888"),
            Some(MetricsSink::Tcp("127.0.0.1:25888".into()))
        );
        for bad in ["tcp:", "tcp:127.0.0.1", "tcp::25888", "tcp:host:port"] {
            assert_eq!(MetricsSink::from_setting(bad), None, "{bad}");
        }
        // Given an agent listening, when a metric set is emitted to it
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink = MetricsSink::Tcp(listener.local_addr().unwrap().to_string());
        MetricSet::new("create")
            .with("BackupDurationMs", 5.0, Unit::Milliseconds)
            .emit(&sink);
        // Then it receives the EMF line (the emit returned: it is queued)
        listener.set_nonblocking(true).unwrap();
        let (stream, _) = listener
            .accept()
            .expect("the metric line was sent to the listener");
        stream.set_nonblocking(false).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream).read_line(&mut line).unwrap();
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["BackupDurationMs"], 5.0);
        assert_eq!(value["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        // and an agent that is not there loses the line, not the operation
        drop(listener);
        MetricSet::new("create").with("X", 1.0, Unit::Count).emit(&sink);
    }

    #[test]
    fn the_sink_setting_names_a_stream_a_file_or_nothing() {
        assert_eq!(MetricsSink::from_setting("stdout"), Some(MetricsSink::Stdout));
        assert_eq!(MetricsSink::from_setting("off"), Some(MetricsSink::Disabled));
        assert_eq!(
            MetricsSink::from_setting("file:/var/log/pgbackup.emf"),
            Some(MetricsSink::File("/var/log/pgbackup.emf".into()))
        );
        assert_eq!(MetricsSink::from_setting("file:"), None);
        assert_eq!(MetricsSink::from_setting("loud"), None);
    }

    #[test]
    fn an_emf_line_declares_each_metric_and_carries_its_value() {
        let line = MetricSet::new("create")
            .with("BackupDurationMs", 1234.0, Unit::Milliseconds)
            .with("BackupSizeBytes", 2048.0, Unit::Bytes)
            .to_emf();
        let value: Value = serde_json::from_str(&line).unwrap();
        let directive = &value["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["Operation"]]));
        assert_eq!(
            directive["Metrics"][0],
            json!({"Name": "BackupDurationMs", "Unit": "Milliseconds"})
        );
        assert_eq!(value["Operation"], "create");
        assert_eq!(value["BackupDurationMs"], 1234.0);
        assert_eq!(value["BackupSizeBytes"], 2048.0);
        assert!(value["_aws"]["Timestamp"].is_i64());
    }
}
