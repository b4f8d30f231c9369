//! Counting the rows of a COPY stream as it passes, in either format, so a
//! backup records them and a restore or a verification can check them.
//!
//! Text format ends every row with `\n` (newlines inside values are
//! escaped). Binary format (PostgreSQL's "Binary Format" of `COPY`) is a
//! signature, flags and a header extension, then per row a 16-bit field
//! count and each field as a 32-bit length (-1 for NULL) and its bytes,
//! then -1 as the field count: rows are counted by walking that framing,
//! across whatever pieces the stream arrives in.

use crate::container::CopyFormat;

/// The signature, flags field and extension length of a binary COPY header.
const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const BINARY_HEADER_FIXED: usize = 11 + 4 + 4;

/// Counts rows of one COPY stream fed in pieces of any size.
#[derive(Debug, Clone)]
pub enum RowCounter {
    Text,
    Binary(BinaryRows),
}

impl RowCounter {
    pub fn new(format: CopyFormat) -> Self {
        match format {
            CopyFormat::Text => Self::Text,
            CopyFormat::Binary => Self::Binary(BinaryRows::default()),
        }
    }

    /// The rows that end in `piece` (the next bytes of the stream).
    pub fn count(&mut self, piece: &[u8]) -> u64 {
        match self {
            Self::Text => memchr::memchr_iter(b'\n', piece).count() as u64,
            Self::Binary(rows) => rows.count(piece),
        }
    }

    /// Whether the stream ended where a whole stream may end: always for
    /// text (a row cut short is the server's to refuse), and for binary
    /// only after the end marker.
    pub fn complete(&self) -> bool {
        match self {
            Self::Text => true,
            Self::Binary(rows) => rows.state == Binary::Done,
        }
    }
}

/// Where a binary COPY stream's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    /// In the signature, flags and extension length.
    Header,
    /// Skipping `n` more bytes of header extension.
    Extension(u32),
    /// Reading a row's field count (or the end marker).
    FieldCount,
    /// Reading the length of a field, `left` fields to go in the row.
    FieldLength { left: u16 },
    /// Skipping `n` more bytes of a field, then `left` fields to go.
    Field { n: u32, left: u16 },
    /// After the end marker: anything more is not part of the stream.
    Done,
    /// The framing made no sense (a bad signature); the server refuses it.
    Invalid,
}

#[derive(Debug, Clone)]
pub struct BinaryRows {
    state: Binary,
    /// The bytes read so far of a fixed-size item (header, count, length)
    /// that a piece ended inside.
    pending: [u8; BINARY_HEADER_FIXED],
    pending_len: usize,
}

impl Default for BinaryRows {
    fn default() -> Self {
        Self {
            state: Binary::Header,
            pending: [0; BINARY_HEADER_FIXED],
            pending_len: 0,
        }
    }
}

impl BinaryRows {
    fn count(&mut self, mut piece: &[u8]) -> u64 {
        let mut rows = 0;
        while !piece.is_empty() {
            if self.state == Binary::FieldCount && self.pending_len == 0 {
                // Whole rows in the piece are skipped by their lengths
                // alone; the state machine takes over at the piece's end.
                while let Some(length) = whole_row(piece) {
                    piece = &piece[length..];
                    rows += 1;
                }
                if piece.is_empty() {
                    break;
                }
            }
            match self.state {
                Binary::Done | Binary::Invalid => break,
                Binary::Header => {
                    let Some(header) = self.take(&mut piece, BINARY_HEADER_FIXED) else {
                        break;
                    };
                    self.state = if header[..11] == BINARY_SIGNATURE[..] {
                        let extension = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
                        Binary::Extension(extension)
                    } else {
                        Binary::Invalid
                    };
                }
                Binary::Extension(n) | Binary::Field { n, .. } => {
                    let skipped = piece.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    piece = &piece[skipped..];
                    let n = n - u32::try_from(skipped).unwrap_or(n);
                    self.state = match self.state {
                        Binary::Extension(_) if n > 0 => Binary::Extension(n),
                        Binary::Extension(_) => Binary::FieldCount,
                        Binary::Field { left, .. } if n > 0 => Binary::Field { n, left },
                        Binary::Field { left, .. } => self.after_field(left, &mut rows),
                        other => other,
                    };
                }
                Binary::FieldCount => {
                    let Some(count) = self.take(&mut piece, 2) else {
                        break;
                    };
                    let count = i16::from_be_bytes([count[0], count[1]]);
                    self.state = match u16::try_from(count) {
                        Err(_) if count == -1 => Binary::Done,
                        Err(_) => Binary::Invalid,
                        Ok(0) => {
                            rows += 1;
                            Binary::FieldCount
                        }
                        Ok(left) => Binary::FieldLength { left },
                    };
                }
                Binary::FieldLength { left } => {
                    let Some(length) = self.take(&mut piece, 4) else {
                        break;
                    };
                    let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
                    self.state = match u32::try_from(length) {
                        Ok(0) => self.after_field(left, &mut rows),
                        Ok(n) => Binary::Field { n, left },
                        // NULL
                        Err(_) if length == -1 => self.after_field(left, &mut rows),
                        Err(_) => Binary::Invalid,
                    };
                }
            }
        }
        rows
    }

    /// The state after a row's field ends, with `left` fields including it.
    fn after_field(&self, left: u16, rows: &mut u64) -> Binary {
        if left <= 1 {
            *rows += 1;
            Binary::FieldCount
        } else {
            Binary::FieldLength { left: left - 1 }
        }
    }

    /// The next `n` bytes of the stream (`n` at most the header's size),
    /// once all have arrived (kept in `pending` across pieces until then).
    fn take(&mut self, piece: &mut &[u8], n: usize) -> Option<[u8; BINARY_HEADER_FIXED]> {
        let here = piece.len().min(n - self.pending_len);
        self.pending[self.pending_len..self.pending_len + here].copy_from_slice(&piece[..here]);
        self.pending_len += here;
        *piece = &piece[here..];
        if self.pending_len < n {
            return None;
        }
        self.pending_len = 0;
        Some(self.pending)
    }
}

/// The length of the binary row at the start of `piece`, if all of it is
/// there (not for the end marker or a malformed count).
fn whole_row(piece: &[u8]) -> Option<usize> {
    let count = i16::from_be_bytes([*piece.first()?, *piece.get(1)?]);
    let mut at = 2usize;
    for _ in 0..u16::try_from(count).ok()? {
        let length = piece.get(at..at + 4)?;
        let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        at += 4;
        match usize::try_from(length) {
            Ok(n) => at = at.checked_add(n)?,
            Err(_) if length == -1 => {}
            Err(_) => return None,
        }
    }
    (at <= piece.len()).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `rows` (each a list of fields, `None` for NULL).
    fn binary_stream(rows: &[Vec<Option<&[u8]>>], extension: &[u8]) -> Vec<u8> {
        let mut out = BINARY_SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&u32::try_from(extension.len()).unwrap().to_be_bytes());
        out.extend_from_slice(extension);
        for row in rows {
            out.extend_from_slice(&i16::try_from(row.len()).unwrap().to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn text_rows_are_newlines() {
        let mut counter = RowCounter::new(CopyFormat::Text);
        assert_eq!(counter.count(b"1\ta\\nb\n2\tc\n"), 2);
        assert!(counter.complete());
    }

    #[test]
    fn binary_rows_are_counted_however_the_stream_is_cut() {
        // Given a binary stream with NULLs, empty values, a value holding
        // what looks like framing, a row of no fields and a header extension
        let newline_and_minus_one: &[u8] = b"\n\xff\xff\xff\xff\n";
        let rows = vec![
            vec![Some(&b"\x00\x00\x00\x01"[..]), None, Some(&b""[..])],
            vec![Some(newline_and_minus_one), Some(&b"Booking"[..]), None],
            vec![],
            vec![None, None, None],
        ];
        let stream = binary_stream(&rows, b"ext");
        // When it arrives whole, or cut at any one point, or byte by byte
        let mut whole = RowCounter::new(CopyFormat::Binary);
        assert_eq!(whole.count(&stream), 4);
        assert!(whole.complete());
        for cut in 0..=stream.len() {
            let mut counter = RowCounter::new(CopyFormat::Binary);
            let rows = counter.count(&stream[..cut]) + counter.count(&stream[cut..]);
            // Then every row is counted once and the end is seen
            assert_eq!(rows, 4, "cut at {cut}");
            assert!(counter.complete(), "cut at {cut}");
        }
        let mut counter = RowCounter::new(CopyFormat::Binary);
        let rows: u64 = stream
            .iter()
            .map(|byte| counter.count(std::slice::from_ref(byte)))
            .sum();
        assert_eq!(rows, 4);
        assert!(counter.complete());
    }

    #[test]
    fn a_binary_stream_cut_short_or_not_binary_is_not_complete() {
        let stream = binary_stream(&[vec![Some(&b"x"[..])]], b"");
        let mut cut_short = RowCounter::new(CopyFormat::Binary);
        assert_eq!(cut_short.count(&stream[..stream.len() - 2]), 1);
        assert!(!cut_short.complete());
        let mut text = RowCounter::new(CopyFormat::Binary);
        assert_eq!(text.count(b"1\tBooking\n2\tUser\n3\tService\n"), 0);
        assert!(!text.complete());
    }
}
