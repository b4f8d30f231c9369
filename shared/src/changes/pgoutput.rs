//! A decoder of PostgreSQL's `pgoutput` logical replication messages,
//! protocol version 1 (the message formats of the PostgreSQL documentation,
//! "Logical Replication Message Formats").
//!
//! Written here rather than taken from crates.io: the crates that decode
//! pgoutput either come with their own fork of tokio-postgres (which this
//! workspace would then carry twice) or are young single-release projects;
//! the format is a small, stable wire format, and a decoder of our own is
//! fuzzable and checked below against bytes a real server produced.
//!
//! Every message is decoded completely or refused: a byte left over, a
//! length running past the end, a string without its terminator or an
//! unknown message or column kind is a [`DecodeError`], never a guess.

use chrono::{DateTime, Utc};

use super::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("an empty logical replication message")]
    Empty,
    #[error("a pgoutput '{kind}' message ends early: {needed} more bytes were needed at offset {at}")]
    Truncated { kind: char, at: usize, needed: usize },
    #[error("a pgoutput '{kind}' message has {extra} bytes after its end")]
    TrailingBytes { kind: char, extra: usize },
    #[error("a pgoutput '{kind}' message has a string without its terminating zero byte at offset {at}")]
    UnterminatedString { kind: char, at: usize },
    #[error("a pgoutput '{kind}' message has a string that is not UTF-8 at offset {at}")]
    NotUtf8 { kind: char, at: usize },
    #[error("unknown pgoutput message type {0:#04x} (this decoder reads protocol version 1)")]
    UnknownMessage(u8),
    #[error("a pgoutput '{kind}' message has an unknown tuple marker {marker:#04x} at offset {at}")]
    UnknownTupleMarker { kind: char, marker: u8, at: usize },
    #[error("a pgoutput '{kind}' message has an unknown column value kind {value_kind:#04x} at offset {at}")]
    UnknownValueKind { kind: char, value_kind: u8, at: usize },
    #[error("a pgoutput '{kind}' message has a negative count or length ({value}) at offset {at}")]
    Negative { kind: char, value: i64, at: usize },
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
}

impl Message {
    /// The message's type byte, as on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Self::Begin(_) => b'B',
            Self::Commit(_) => b'C',
            Self::Origin(_) => b'O',
            Self::Relation(_) => b'R',
            Self::Type(_) => b'Y',
            Self::Insert(_) => b'I',
            Self::Update(_) => b'U',
            Self::Delete(_) => b'D',
            Self::Truncate(_) => b'T',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: where decoding resumes.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// The transaction came from another node through a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's shape as the changes that follow refer to it (by `oid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key a DELETE or UPDATE names).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A non-built-in type a column uses (an enum, a domain, an extension's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation: u32,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation: u32,
    /// The old row: its key columns only (`K`, when the key changed) or all
    /// columns (`O`, replica identity full); absent when the key is unchanged.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation: u32,
    pub old: OldTuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity's columns (others are null).
    Key(Tuple),
    /// `O`: the whole old row (replica identity full).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            Self::Key(tuple) | Self::Full(tuple) => tuple,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relations: Vec<u32>,
}

/// A row's columns, in the relation's column order.
pub type Tuple = Vec<Value>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value, not sent; the stored one stands.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Vec<u8>),
    /// `b`: the type's binary format (only sent when asked for with the
    /// `binary` option, which capture never sets; decoded for completeness).
    Binary(Vec<u8>),
}

/// A commit timestamp: microseconds since 2000-01-01 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The instant, or `None` past what chrono represents.
    pub fn to_utc(self) -> Option<DateTime<Utc>> {
        let unix = self.0.checked_add(POSTGRES_EPOCH_UNIX_MICROS)?;
        DateTime::from_timestamp_micros(unix)
    }
}

/// Decodes one message (one `data` value of
/// `pg_logical_slot_peek_binary_changes`, or one XLogData payload).
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let mut cursor = Cursor {
        bytes,
        at: 1,
        kind: char::from(tag),
    };
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: Lsn(cursor.u64()?),
            commit_time: PgTimestamp(cursor.i64()?),
            xid: cursor.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: cursor.u8()?,
            commit_lsn: Lsn(cursor.u64()?),
            end_lsn: Lsn(cursor.u64()?),
            commit_time: PgTimestamp(cursor.i64()?),
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: Lsn(cursor.u64()?),
            name: cursor.string()?,
        }),
        b'R' => {
            let oid = cursor.u32()?;
            let schema = cursor.string()?;
            let name = cursor.string()?;
            let replica_identity = cursor.u8()?;
            let count = cursor.count16()?;
            let mut columns = Vec::with_capacity(count.min(1600));
            for _ in 0..count {
                columns.push(Column {
                    key: cursor.u8()? & 1 == 1,
                    name: cursor.string()?,
                    type_oid: cursor.u32()?,
                    type_modifier: cursor.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeInfo {
            oid: cursor.u32()?,
            schema: cursor.string()?,
            name: cursor.string()?,
        }),
        b'I' => {
            let relation = cursor.u32()?;
            cursor.expect_marker(b"N")?;
            Message::Insert(Insert {
                relation,
                new: cursor.tuple()?,
            })
        }
        b'U' => {
            let relation = cursor.u32()?;
            let (marker, at) = (cursor.u8()?, cursor.at - 1);
            let old = match marker {
                b'K' => Some(OldTuple::Key(cursor.tuple()?)),
                b'O' => Some(OldTuple::Full(cursor.tuple()?)),
                b'N' => None,
                other => return Err(cursor.bad_marker(other, at)),
            };
            if old.is_some() {
                cursor.expect_marker(b"N")?;
            }
            Message::Update(Update {
                relation,
                old,
                new: cursor.tuple()?,
            })
        }
        b'D' => {
            let relation = cursor.u32()?;
            let (marker, at) = (cursor.u8()?, cursor.at - 1);
            let old = match marker {
                b'K' => OldTuple::Key(cursor.tuple()?),
                b'O' => OldTuple::Full(cursor.tuple()?),
                other => return Err(cursor.bad_marker(other, at)),
            };
            Message::Delete(Delete { relation, old })
        }
        b'T' => {
            let count = cursor.count32()?;
            let options = cursor.u8()?;
            let mut relations = Vec::with_capacity(count.min(bytes.len() / 4));
            for _ in 0..count {
                relations.push(cursor.u32()?);
            }
            Message::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            })
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    let extra = bytes.len() - cursor.at;
    if extra != 0 {
        return Err(DecodeError::TrailingBytes {
            kind: cursor.kind,
            extra,
        });
    }
    Ok(message)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    kind: char,
}

impl Cursor<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let available = self.bytes.len() - self.at;
        if len > available {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                at: self.at,
                needed: len - available,
            });
        }
        let taken = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let value = i16::from_be_bytes(self.array()?);
        usize::try_from(value).map_err(|_| self.negative(i64::from(value), at))
    }

    fn count32(&mut self) -> Result<usize, DecodeError> {
        let at = self.at;
        let value = self.i32()?;
        usize::try_from(value).map_err(|_| self.negative(i64::from(value), at))
    }

    fn negative(&self, value: i64, at: usize) -> DecodeError {
        DecodeError::Negative {
            kind: self.kind,
            value,
            at,
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.at;
        let rest = &self.bytes[start..];
        let Some(end) = memchr::memchr(0, rest) else {
            return Err(DecodeError::UnterminatedString {
                kind: self.kind,
                at: start,
            });
        };
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::NotUtf8 {
            kind: self.kind,
            at: start,
        })?;
        self.at = start + end + 1;
        Ok(text.to_owned())
    }

    fn expect_marker(&mut self, allowed: &[u8]) -> Result<u8, DecodeError> {
        let at = self.at;
        let marker = self.u8()?;
        if allowed.contains(&marker) {
            Ok(marker)
        } else {
            Err(self.bad_marker(marker, at))
        }
    }

    fn bad_marker(&self, marker: u8, at: usize) -> DecodeError {
        DecodeError::UnknownTupleMarker {
            kind: self.kind,
            marker,
            at,
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count16()?;
        let mut values = Vec::with_capacity(count.min(1600));
        for _ in 0..count {
            let at = self.at;
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => Value::Text(self.sized()?),
                b'b' => Value::Binary(self.sized()?),
                other => {
                    return Err(DecodeError::UnknownValueKind {
                        kind: self.kind,
                        value_kind: other,
                        at,
                    });
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn sized(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.count32()?;
        Ok(self.take(len)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Bytes a PostgreSQL 15.20 server produced (infra/pg-logical.sh; the
    // statements are beside each message), read with
    // `SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes(
    //   slot, NULL, NULL, 'proto_version', '1', 'publication_names', pub)`.

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    // CREATE TABLE t (id int PRIMARY KEY, name text, big text) with big's
    // storage EXTERNAL, relation oid 16385.
    const RELATION_T: &str = "52000040017075626c69630074006400030169640000000017ffffffff006e616d650000000019ffffffff006269670000000019ffffffff";

    #[test]
    fn a_transaction_of_inserts_decodes_to_begin_relation_rows_and_commit() {
        // Given: BEGIN; INSERT INTO t VALUES (1, 'a', repeat('x', 3000)), (2, NULL, 'b'); COMMIT
        let begin = decode(&hex("420000000001948df80003050341eeaf22000002d8")).unwrap();
        let relation = decode(&hex(RELATION_T)).unwrap();
        let first = decode(&hex(&format!(
            "49000040014e00037400000001317400000001617400000bb8{}",
            "78".repeat(3000)
        )))
        .unwrap();
        let second = decode(&hex("49000040014e00037400000001326e740000000162")).unwrap();
        let commit = decode(&hex("43000000000001948df80000000001948e280003050341eeaf22")).unwrap();

        // Then the transaction's xid, commit LSN and time are the server's
        let Message::Begin(begin) = begin else {
            panic!("{begin:?}")
        };
        assert_eq!(begin.xid, 728);
        assert_eq!(begin.final_lsn.to_string(), "0/1948DF8");
        let Message::Commit(commit) = commit else {
            panic!("{commit:?}")
        };
        assert_eq!(commit.commit_lsn, begin.final_lsn);
        assert_eq!(commit.end_lsn.to_string(), "0/1948E28");
        assert_eq!(commit.commit_time, begin.commit_time);
        let at = commit.commit_time.to_utc().unwrap();
        assert_eq!(at.date_naive().to_string(), "2026-12-07");
        // The relation names its key column
        assert_eq!(
            relation,
            Message::Relation(Relation {
                oid: 16385,
                schema: "public".into(),
                name: "t".into(),
                replica_identity: b'd',
                columns: vec![
                    Column {
                        key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    Column {
                        key: false,
                        name: "name".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                    Column {
                        key: false,
                        name: "big".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                ],
            })
        );
        // And the rows carry text values, a NULL, and the whole large value
        let Message::Insert(first) = first else { panic!() };
        assert_eq!(first.relation, 16385);
        assert_eq!(first.new[0], Value::Text(b"1".to_vec()));
        assert_eq!(first.new[2], Value::Text(vec![b'x'; 3000]));
        assert_eq!(
            second,
            Message::Insert(Insert {
                relation: 16385,
                new: vec![
                    Value::Text(b"2".to_vec()),
                    Value::Null,
                    Value::Text(b"b".to_vec())
                ],
            })
        );
    }

    #[test]
    fn an_update_leaving_a_toasted_column_alone_marks_it_unchanged() {
        // Given: UPDATE t SET name = 'c' WHERE id = 1 (big is stored out of line)
        let update = decode(&hex("55000040014e000374000000013174000000016375")).unwrap();
        // Then the key is unchanged (no old tuple) and big is 'u', not a value
        assert_eq!(
            update,
            Message::Update(Update {
                relation: 16385,
                old: None,
                new: vec![
                    Value::Text(b"1".to_vec()),
                    Value::Text(b"c".to_vec()),
                    Value::UnchangedToast
                ],
            })
        );
    }

    #[test]
    fn a_delete_names_the_key_and_a_truncate_its_tables() {
        // Given: DELETE FROM t WHERE id = 2; then TRUNCATE t
        let delete = decode(&hex("44000040014b00037400000001326e6e")).unwrap();
        let truncate = decode(&hex("54000000010000004001")).unwrap();
        assert_eq!(
            delete,
            Message::Delete(Delete {
                relation: 16385,
                old: OldTuple::Key(vec![Value::Text(b"2".to_vec()), Value::Null, Value::Null]),
            })
        );
        assert_eq!(
            truncate,
            Message::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relations: vec![16385],
            })
        );
    }

    #[test]
    fn origin_and_type_messages_decode() {
        // Given: a transaction under replication origin 'upstream' (origin
        // LSN 0/AB) inserting into m (id int PRIMARY KEY, feel mood), mood an enum
        let origin = decode(&hex("4f00000000000000ab757073747265616d00")).unwrap();
        let kind = decode(&hex("59000040107075626c6963006d6f6f6400")).unwrap();
        let relation = decode(&hex(
            "52000040157075626c6963006d006400020169640000000017ffffffff006665656c0000004010ffffffff",
        ))
        .unwrap();
        assert_eq!(
            origin,
            Message::Origin(Origin {
                commit_lsn: Lsn(0xAB),
                name: "upstream".into()
            })
        );
        assert_eq!(
            kind,
            Message::Type(TypeInfo {
                oid: 16400,
                schema: "public".into(),
                name: "mood".into()
            })
        );
        let Message::Relation(relation) = relation else {
            panic!()
        };
        assert_eq!(relation.columns[1].type_oid, 16400);
    }

    #[test]
    fn damaged_messages_are_refused_not_guessed() {
        let insert = hex("49000040014e00037400000001326e740000000162");
        // Cut anywhere: too short
        for cut in 1..insert.len() {
            assert!(
                matches!(decode(&insert[..cut]), Err(DecodeError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        // A byte too many
        let mut longer = insert.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(DecodeError::TrailingBytes { kind: 'I', extra: 1 })
        );
        // An unknown column kind, an unknown marker, an unknown message, nothing at all
        let mut bad_kind = insert.clone();
        bad_kind[8] = b'x';
        assert!(matches!(
            decode(&bad_kind),
            Err(DecodeError::UnknownValueKind { value_kind: b'x', .. })
        ));
        let mut bad_marker = insert.clone();
        bad_marker[5] = b'Q';
        assert!(matches!(
            decode(&bad_marker),
            Err(DecodeError::UnknownTupleMarker { marker: b'Q', .. })
        ));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessage(b'Z')));
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        // A negative length
        let negative = hex("49000040014e000174ffffffff");
        assert!(matches!(
            decode(&negative),
            Err(DecodeError::Negative { value: -1, .. })
        ));
        // A string without its terminator
        assert!(matches!(
            decode(&hex("59000040107075626c6963")),
            Err(DecodeError::UnterminatedString { .. })
        ));
    }
}
