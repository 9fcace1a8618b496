//! A job's captured output: bytes in memory or a (temporary) file.
//!
//! A [`Runner`](crate::Runner) hands back each job's stdout and stderr whole, as a
//! [`Captured`]; the driver copies it to its writer in fixed-size chunks, so a job that
//! printed gigabytes costs disk, not memory, as long as the runner spilled it to a file.
//! [`CaptureWriter`] does the spilling for a runner that receives output in pieces: it
//! keeps the first [`CaptureWriter::DEFAULT_LIMIT`] bytes in memory and moves everything
//! to an anonymous temporary file (`tempfile::tempfile()`) beyond that.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The whole output of one stream of one job.
pub struct Captured {
    inner: Inner,
}

enum Inner {
    Bytes(Vec<u8>),
    /// A file and how many bytes of it, from its start, are the output.
    File(File, u64),
}

impl Captured {
    /// No output.
    pub fn empty() -> Self {
        Self::from_bytes(Vec::new())
    }

    /// Output held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            inner: Inner::Bytes(bytes),
        }
    }

    /// Output held in a file: its content from offset 0 to its current length.
    /// Bytes appended to the file later (say, by a left-over background process) are
    /// not part of it.
    pub fn from_file(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            inner: Inner::File(file, len),
        })
    }

    /// Number of bytes.
    pub fn len(&self) -> u64 {
        match &self.inner {
            Inner::Bytes(b) => b.len() as u64,
            Inner::File(_, len) => *len,
        }
    }

    /// Whether there is no output.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the output lives in a file rather than in memory.
    pub fn is_file(&self) -> bool {
        matches!(self.inner, Inner::File(..))
    }

    /// Copies the whole output to `out` in chunks of at most 64 KiB and returns the
    /// number of bytes copied. May be called again: it always starts from the
    /// beginning.
    pub fn write_to(&mut self, out: &mut dyn Write) -> io::Result<u64> {
        match &mut self.inner {
            Inner::Bytes(b) => {
                for chunk in b.chunks(CHUNK) {
                    out.write_all(chunk)?;
                }
                Ok(b.len() as u64)
            }
            Inner::File(file, len) => {
                file.seek(SeekFrom::Start(0))?;
                let mut reader = Read::by_ref(file).take(*len);
                let mut buf = vec![0u8; CHUNK];
                let mut copied = 0u64;
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    out.write_all(&buf[..n])?;
                    copied += n as u64;
                }
                if copied < *len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("captured output shrank from {len} to {copied} bytes"),
                    ));
                }
                Ok(copied)
            }
        }
    }

    /// Reads the whole output into memory (for tests and small outputs).
    pub fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.write_to(&mut v)?;
        Ok(v)
    }
}

/// Size of the pieces output is copied in.
const CHUNK: usize = 64 * 1024;

impl Default for Captured {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Vec<u8>> for Captured {
    fn from(bytes: Vec<u8>) -> Self {
        Self::from_bytes(bytes)
    }
}

impl From<String> for Captured {
    fn from(s: String) -> Self {
        Self::from_bytes(s.into_bytes())
    }
}

impl From<&str> for Captured {
    fn from(s: &str) -> Self {
        Self::from_bytes(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_file() { "file" } else { "memory" };
        write!(f, "Captured({} bytes in {place})", self.len())
    }
}

/// A [`Write`] sink that keeps small output in memory and spills large output to an
/// anonymous temporary file; [`finish`](Self::finish) turns it into a [`Captured`].
pub struct CaptureWriter {
    buf: Vec<u8>,
    file: Option<File>,
    limit: usize,
}

impl CaptureWriter {
    /// Bytes kept in memory before spilling to a file: 1 MiB.
    pub const DEFAULT_LIMIT: usize = 1024 * 1024;

    /// A writer that spills beyond [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT).
    pub fn new() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }

    /// A writer that spills to a file once more than `limit` bytes were written.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            file: None,
            limit,
        }
    }

    /// The captured output.
    pub fn finish(mut self) -> io::Result<Captured> {
        match self.file.take() {
            Some(file) => Captured::from_file(file),
            None => Ok(Captured::from_bytes(std::mem::take(&mut self.buf))),
        }
    }
}

impl Default for CaptureWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(file) = &mut self.file {
            return file.write(data);
        }
        if self.buf.len() + data.len() <= self.limit {
            self.buf.extend_from_slice(data);
            return Ok(data.len());
        }
        let mut file = tempfile::tempfile()?;
        file.write_all(&self.buf)?;
        self.buf = Vec::new();
        let n = file.write(data)?;
        self.file = Some(file);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for CaptureWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureWriter")
            .field("in_memory", &self.buf.len())
            .field("spilled", &self.file.is_some())
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_stays_in_memory_and_large_spills() {
        let mut w = CaptureWriter::with_limit(10);
        w.write_all(b"hello").unwrap();
        let mut c = w.finish().unwrap();
        assert!(!c.is_file());
        assert_eq!(c.to_vec().unwrap(), b"hello");

        let mut w = CaptureWriter::with_limit(10);
        w.write_all(b"hello").unwrap();
        w.write_all(b" world, this is long").unwrap();
        w.write_all(b"!").unwrap();
        let mut c = w.finish().unwrap();
        assert!(c.is_file());
        assert_eq!(c.len(), 26);
        assert_eq!(c.to_vec().unwrap(), b"hello world, this is long!");
        // Copying again starts from the beginning.
        assert_eq!(c.to_vec().unwrap(), b"hello world, this is long!");
    }

    #[test]
    fn file_output_ends_at_its_length_when_captured() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"first").unwrap();
        let mut c = Captured::from_file(file.try_clone().unwrap()).unwrap();
        file.write_all(b" later").unwrap();
        assert_eq!(c.to_vec().unwrap(), b"first");
    }
}
