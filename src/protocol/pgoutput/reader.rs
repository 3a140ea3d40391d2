//! A bounds-checked big-endian cursor over one message.
//!
//! All reads go through here so that no other code indexes the input: every read checks
//! the remaining length first and reports the offset and the field it expected, which
//! is what makes the decoder panic-free on arbitrary input.

use bytes::Bytes;

use super::error::DecodeError;

/// Cursor over a message; `pos` is the offset of the next unread byte.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Offset of the next unread byte.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes `n` bytes as a slice of the input, or reports what was expected.
    fn take(&mut self, n: usize, expected: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                expected,
                needed: n,
                remaining: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, expected)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(expected)?[0])
    }

    pub(crate) fn u16(&mut self, expected: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(expected)?))
    }

    pub(crate) fn u32(&mut self, expected: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(expected)?))
    }

    pub(crate) fn i32(&mut self, expected: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(expected)?))
    }

    pub(crate) fn u64(&mut self, expected: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(expected)?))
    }

    pub(crate) fn i64(&mut self, expected: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(expected)?))
    }

    /// Skips `n` bytes (validated to exist).
    pub(crate) fn skip(&mut self, n: usize, expected: &'static str) -> Result<(), DecodeError> {
        self.take(n, expected).map(|_| ())
    }

    /// The input from `start` up to the current position, zero-copy.
    pub(crate) fn since(&self, start: usize) -> Bytes {
        self.buf.slice(start.min(self.pos)..self.pos)
    }

    /// `n` bytes as a zero-copy slice of the input.
    pub(crate) fn bytes(&mut self, n: usize, expected: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, expected)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string (PostgreSQL's `pq_sendstring`).
    ///
    /// Names are copied into a `String`: they occur only in rare messages (Relation,
    /// Type, Origin, Message, two-phase), and owning them avoids any unsafe
    /// unchecked-UTF-8 view over `Bytes`.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                offset: start,
                what,
            })?;
        let raw = rest.get(..nul).unwrap_or_default();
        let s = std::str::from_utf8(raw).map_err(|e| DecodeError::InvalidUtf8 {
            offset: start + e.valid_up_to(),
            what,
        })?;
        self.pos = start + nul + 1;
        Ok(s.to_owned())
    }

    /// Checks that a count of entries of at least `min_each` bytes fits what is left,
    /// so callers can allocate `count` entries without trusting the input.
    pub(crate) fn check_count(
        &self,
        count: usize,
        min_each: usize,
        offset: usize,
        what: &'static str,
    ) -> Result<(), DecodeError> {
        let fits = count
            .checked_mul(min_each)
            .is_some_and(|need| need <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(DecodeError::CountTooLarge {
                offset,
                what,
                count,
                min_each,
                remaining: self.remaining(),
            })
        }
    }

    /// Fails unless the whole message was consumed.
    pub(crate) fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            remaining => Err(DecodeError::TrailingBytes {
                offset: self.pos,
                message,
                remaining,
            }),
        }
    }
}
