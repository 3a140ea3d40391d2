//! A byte buffer that moves to a temporary file past a memory budget.
//!
//! Whatever must be held until a transaction commits (a rendered transaction in `tail`, a
//! streamed transaction's changes) goes through this, so memory stays bounded by the budget
//! whatever the transaction's size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Appends to the temp file go out in blocks of this size (one write per message
/// would be a system call each).
const WRITE_BLOCK: usize = 64 * 1024;

/// Bytes kept in memory up to `budget`, then in an unnamed temp file.
#[derive(Debug)]
pub struct SpillBuffer {
    budget: usize,
    /// Everything, until it spills; then only what is not written to the file yet.
    mem: Vec<u8>,
    file: Option<File>,
    spill_dir: PathBuf,
    len: u64,
    /// The file was read from the start since the last append: seek to its end first.
    rewound: bool,
}

impl SpillBuffer {
    /// A buffer holding at most `budget` bytes in memory; spill files go to `spill_dir`.
    #[must_use]
    pub fn new(budget: usize, spill_dir: PathBuf) -> Self {
        SpillBuffer {
            budget,
            mem: Vec::new(),
            file: None,
            spill_dir,
            len: 0,
            rewound: false,
        }
    }

    /// Total bytes appended since the last [`SpillBuffer::clear`].
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the contents go past the budget.
    #[must_use]
    pub fn spill_dir(&self) -> &std::path::Path {
        &self.spill_dir
    }

    /// Whether the contents went to disk.
    #[must_use]
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Drops the contents (and the spill file), keeping the memory allocation for reuse.
    pub fn clear(&mut self) {
        self.mem.clear();
        self.file = None;
        self.len = 0;
        self.rewound = false;
    }

    /// Copies everything appended so far to `out`, in order.
    pub fn copy_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        let len = self.len;
        match self.written_file()? {
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                io::copy(&mut f.take(len), out)?;
                f.seek(SeekFrom::End(0))?;
            }
            None => out.write_all(&self.mem)?,
        }
        Ok(())
    }

    /// Drops everything appended after the first `len` bytes (a savepoint rolled back).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        match self.written_file()? {
            Some(f) => {
                f.set_len(len)?;
                f.seek(SeekFrom::End(0))?;
            }
            // `len` < `self.len` = the memory's length, so it fits a usize.
            None => self
                .mem
                .truncate(usize::try_from(len).unwrap_or(usize::MAX)),
        }
        self.rewound = false;
        self.len = len;
        Ok(())
    }

    /// Reads the contents back from the start, in order (from the file, a block at a
    /// time, once spilled: memory stays bounded).
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + Send + '_>> {
        let len = self.len;
        if self.written_file()?.is_none() {
            return Ok(Box::new(&self.mem[..]));
        }
        self.rewound = true;
        Ok(match self.file.as_mut() {
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                Box::new(io::BufReader::with_capacity(WRITE_BLOCK, f.take(len)))
            }
            None => Box::new(&self.mem[..]),
        })
    }

    /// The spill file with everything appended written to it, if spilled.
    fn written_file(&mut self) -> io::Result<Option<&mut File>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(None);
        };
        if !self.mem.is_empty() {
            if std::mem::take(&mut self.rewound) {
                f.seek(SeekFrom::End(0))?;
            }
            f.write_all(&self.mem)?;
            self.mem.clear();
        }
        f.flush()?;
        Ok(Some(f))
    }

    fn spill(&mut self) -> io::Result<()> {
        let mut f = tempfile_in(&self.spill_dir)?;
        f.write_all(&self.mem)?;
        self.mem.clear();
        self.mem.shrink_to(WRITE_BLOCK);
        self.file = Some(f);
        Ok(())
    }
}

impl Write for SpillBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + buf.len() > self.budget {
            self.spill()?;
        }
        self.mem.extend_from_slice(buf);
        self.len += buf.len() as u64;
        if self.file.is_some() && self.mem.len() >= WRITE_BLOCK {
            self.written_file()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.written_file().map(|_| ())
    }
}

/// An unnamed temp file: created, then unlinked at once so nothing is left behind on a crash.
fn tempfile_in(dir: &std::path::Path) -> io::Result<File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        ".pgmesh-spill-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_contents_stay_in_memory() {
        let mut b = SpillBuffer::new(100, std::env::temp_dir());
        b.write_all(b"hello ").unwrap();
        b.write_all(b"world").unwrap();
        assert!(!b.spilled());
        let mut out = Vec::new();
        b.copy_to(&mut out).unwrap();
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn large_contents_spill_and_read_back_in_order() {
        let mut b = SpillBuffer::new(1000, std::env::temp_dir());
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let chunk = format!("chunk {i};");
            b.write_all(chunk.as_bytes()).unwrap();
            expected.extend_from_slice(chunk.as_bytes());
        }
        assert!(b.spilled());
        assert_eq!(b.len(), expected.len() as u64);
        let mut out = Vec::new();
        b.copy_to(&mut out).unwrap();
        assert_eq!(out, expected);
        // Appending after a copy keeps order.
        b.write_all(b"tail").unwrap();
        out.clear();
        b.copy_to(&mut out).unwrap();
        expected.extend_from_slice(b"tail");
        assert_eq!(out, expected);
        b.clear();
        assert!(b.is_empty() && !b.spilled());
    }

    #[test]
    fn appends_past_a_write_block_read_back_and_truncate_in_order() {
        let mut b = SpillBuffer::new(1000, std::env::temp_dir());
        let mut expected = Vec::new();
        let mut mark = 0;
        for i in 0..20_000u32 {
            if i == 12_345 {
                mark = b.len();
            }
            let chunk = format!("chunk {i};");
            b.write_all(chunk.as_bytes()).unwrap();
            expected.extend_from_slice(chunk.as_bytes());
        }
        assert!(b.spilled() && expected.len() > 3 * WRITE_BLOCK);
        let mut out = Vec::new();
        b.reader().unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, expected);
        b.truncate(mark).unwrap();
        expected.truncate(usize::try_from(mark).unwrap());
        b.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        out.clear();
        b.copy_to(&mut out).unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn truncation_drops_the_tail_in_memory_and_on_disk() {
        for budget in [1000, 10] {
            let mut b = SpillBuffer::new(budget, std::env::temp_dir());
            b.write_all(b"keep this;").unwrap();
            let mark = b.len();
            b.write_all(b"drop this;").unwrap();
            b.truncate(mark).unwrap();
            b.write_all(b"then this").unwrap();
            let mut out = Vec::new();
            b.reader().unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, b"keep this;then this", "budget {budget}");
            assert_eq!(b.len(), out.len() as u64);
            // Appending after a read keeps order.
            b.write_all(b"!").unwrap();
            out.clear();
            b.reader().unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, b"keep this;then this!", "budget {budget}");
        }
    }
}
