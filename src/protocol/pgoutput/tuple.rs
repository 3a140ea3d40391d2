//! Row images (TupleData): validated once, then walked lazily without allocating.
//!
//! Insert/Update/Delete are the hot path of replication. Instead of building a
//! `Vec<Column>` per row, decoding checks the whole tuple once (column kinds, lengths,
//! bounds) and keeps the tuple's bytes; [`Tuple::iter`] then yields each column as a
//! slice of the original input. Because the bytes were validated, the iterator needs no
//! error path.

use bytes::Bytes;

use super::error::DecodeError;
use super::reader::Reader;

/// Column kind byte: SQL NULL.
pub const COLUMN_NULL: u8 = b'n';
/// Column kind byte: unchanged TOASTed value (not sent; keep the existing value).
pub const COLUMN_UNCHANGED_TOAST: u8 = b'u';
/// Column kind byte: value in the type's text output format.
pub const COLUMN_TEXT: u8 = b't';
/// Column kind byte: value in the type's binary send format (`binary 'true'`).
pub const COLUMN_BINARY: u8 = b'b';

/// One column of a row image. `T` is [`Bytes`] (owned, zero-copy slice of the message)
/// from [`Tuple::iter`] or `&[u8]` from [`Tuple::iter_borrowed`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Column<T = Bytes> {
    /// SQL NULL ('n').
    Null,
    /// An unchanged TOASTed value that the server did not send ('u'): the subscriber
    /// must keep the value it has. Only occurs in the new tuple of an Update.
    UnchangedToast,
    /// Text output format ('t'), as the type's output function prints it.
    Text(T),
    /// Binary send format ('b').
    Binary(T),
}

impl<T> Column<T> {
    /// The value bytes for text and binary columns.
    pub fn value(&self) -> Option<&T> {
        match self {
            Column::Text(v) | Column::Binary(v) => Some(v),
            Column::Null | Column::UnchangedToast => None,
        }
    }

    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Column::Null)
    }

    #[must_use]
    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, Column::UnchangedToast)
    }
}

/// A validated row image: the column count and the raw column bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple {
    ncols: u16,
    /// The bytes after the column count, exactly covering `ncols` columns.
    data: Bytes,
}

impl Tuple {
    /// Reads and validates a TupleData at the reader's position.
    #[inline(always)]
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
        let count_at = r.pos();
        let ncols = r.u16("tuple column count")?;
        // Each column takes at least its kind byte.
        r.check_count(usize::from(ncols), 1, count_at, "tuple column")?;
        let start = r.pos();
        for _ in 0..ncols {
            let kind_at = r.pos();
            match r.u8("tuple column kind")? {
                COLUMN_NULL | COLUMN_UNCHANGED_TOAST => {}
                COLUMN_TEXT | COLUMN_BINARY => {
                    let len_at = r.pos();
                    let len = r.i32("tuple column length")?;
                    let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
                        offset: len_at,
                        what: "tuple column value",
                        length: len,
                    })?;
                    r.skip(len, "tuple column value")?;
                }
                kind => {
                    return Err(DecodeError::UnknownColumnKind {
                        offset: kind_at,
                        kind,
                    })
                }
            }
        }
        Ok(Tuple {
            ncols,
            data: r.since(start),
        })
    }

    /// Builds a tuple from columns, for tests and for code that synthesizes rows.
    /// `None` when the columns cannot be represented on the wire (more than 65535
    /// columns, or a value longer than `i32::MAX` bytes).
    #[must_use]
    pub fn from_columns<T: AsRef<[u8]>>(columns: &[Column<T>]) -> Option<Tuple> {
        let ncols = u16::try_from(columns.len()).ok()?;
        let mut data = Vec::new();
        for c in columns {
            match c {
                Column::Null => data.push(COLUMN_NULL),
                Column::UnchangedToast => data.push(COLUMN_UNCHANGED_TOAST),
                Column::Text(v) | Column::Binary(v) => {
                    let v = v.as_ref();
                    data.push(if matches!(c, Column::Text(_)) {
                        COLUMN_TEXT
                    } else {
                        COLUMN_BINARY
                    });
                    let len = i32::try_from(v.len()).ok()?;
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(v);
                }
            }
        }
        Some(Tuple {
            ncols,
            data: Bytes::from(data),
        })
    }

    /// The same tuple over a copy of its bytes of its own, so that its values no longer
    /// share the reference count (and the lifetime) of the buffer it was read from.
    #[must_use]
    pub fn detached(&self) -> Tuple {
        Tuple {
            ncols: self.ncols,
            data: Bytes::copy_from_slice(&self.data),
        }
    }

    /// Number of columns (live, non-generated attributes of the relation).
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.ncols)
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ncols == 0
    }

    /// The raw column bytes as sent (after the column count), e.g. to spill to disk.
    #[must_use]
    pub fn raw(&self) -> &Bytes {
        &self.data
    }

    /// Columns as zero-copy `Bytes` slices of the input message.
    #[must_use]
    pub fn iter(&self) -> Columns<'_> {
        Columns {
            inner: Borrowed {
                data: &self.data,
                pos: 0,
                left: self.ncols,
            },
            owner: &self.data,
        }
    }

    /// Columns as borrowed slices: no reference-count traffic, the fastest walk.
    #[must_use]
    pub fn iter_borrowed(&self) -> ColumnsBorrowed<'_> {
        ColumnsBorrowed {
            inner: Borrowed {
                data: &self.data,
                pos: 0,
                left: self.ncols,
            },
        }
    }

    /// Column `i` (walks the columns before it).
    #[must_use]
    pub fn get(&self, i: usize) -> Option<Column> {
        self.iter().nth(i)
    }

    /// All columns collected, for callers that index them repeatedly.
    #[must_use]
    pub fn to_vec(&self) -> Vec<Column> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for &'a Tuple {
    type Item = Column;
    type IntoIter = Columns<'a>;

    fn into_iter(self) -> Columns<'a> {
        self.iter()
    }
}

/// The shared walk over validated column bytes; yields (kind, value range).
#[derive(Debug, Clone)]
struct Borrowed<'a> {
    data: &'a [u8],
    pos: usize,
    left: u16,
}

impl<'a> Borrowed<'a> {
    /// Next column; `None` at the end. The data was validated by [`Tuple::read`] (or
    /// built by [`Tuple::from_columns`]), so the `None` on malformed bytes cannot occur;
    /// it exists only so that this code has no panicking path.
    fn next_col(&mut self) -> Option<Column<(usize, usize)>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let kind = *self.data.get(self.pos)?;
        self.pos += 1;
        match kind {
            COLUMN_NULL => Some(Column::Null),
            COLUMN_UNCHANGED_TOAST => Some(Column::UnchangedToast),
            COLUMN_TEXT | COLUMN_BINARY => {
                let len_bytes: [u8; 4] = self.data.get(self.pos..self.pos + 4)?.try_into().ok()?;
                let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
                let start = self.pos + 4;
                let end = start.checked_add(len)?;
                if end > self.data.len() {
                    return None;
                }
                self.pos = end;
                Some(if kind == COLUMN_TEXT {
                    Column::Text((start, end))
                } else {
                    Column::Binary((start, end))
                })
            }
            _ => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.left)))
    }
}

/// Iterator over a tuple's columns as `Bytes`; see [`Tuple::iter`].
#[derive(Debug, Clone)]
pub struct Columns<'a> {
    inner: Borrowed<'a>,
    owner: &'a Bytes,
}

impl Iterator for Columns<'_> {
    type Item = Column;

    fn next(&mut self) -> Option<Column> {
        Some(match self.inner.next_col()? {
            Column::Null => Column::Null,
            Column::UnchangedToast => Column::UnchangedToast,
            Column::Text((s, e)) => Column::Text(self.owner.slice(s..e)),
            Column::Binary((s, e)) => Column::Binary(self.owner.slice(s..e)),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Iterator over a tuple's columns as `&[u8]`; see [`Tuple::iter_borrowed`].
#[derive(Debug, Clone)]
pub struct ColumnsBorrowed<'a> {
    inner: Borrowed<'a>,
}

impl<'a> Iterator for ColumnsBorrowed<'a> {
    type Item = Column<&'a [u8]>;

    fn next(&mut self) -> Option<Column<&'a [u8]>> {
        let data = self.inner.data;
        Some(match self.inner.next_col()? {
            Column::Null => Column::Null,
            Column::UnchangedToast => Column::UnchangedToast,
            Column::Text((s, e)) => Column::Text(data.get(s..e)?),
            Column::Binary((s, e)) => Column::Binary(data.get(s..e)?),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
