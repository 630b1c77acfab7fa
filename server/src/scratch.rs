//! Scratch files: what a consolidation spills to disk so that its memory
//! does not grow with the batch.
//!
//! A scratch file is unlinked as soon as it is created, so nothing is left
//! behind, whatever way the process ends; it lives as long as its handle.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// An anonymous file in a scratch directory, appended to and read at offsets.
pub struct ScratchFile {
    file: File,
    len: u64,
}

impl ScratchFile {
    /// A new, already unlinked, file in `dir` (`what` names it while it has a name).
    pub fn create(dir: &Path, what: &str) -> std::io::Result<ScratchFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "etracker-scratch-{what}-{}-{n}",
            std::process::id()
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(ScratchFile { file, len: 0 })
    }

    /// Appends `bytes`; returns the offset they start at.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        let offset = self.len;
        self.file.write_all_at(bytes, offset)?;
        self.len += bytes.len() as u64;
        Ok(offset)
    }

    /// `len` bytes from `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bytes_read_back_and_no_name_is_left() {
        let dir = std::env::temp_dir().join(format!("scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = ScratchFile::create(&dir, "test").unwrap();
        assert_eq!(file.append(b"hello ").unwrap(), 0);
        assert_eq!(file.append(b"world").unwrap(), 6);
        assert_eq!(file.read_at(3, 5).unwrap(), b"lo wo");
        assert_eq!(file.append(b"!").unwrap(), 11);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(file);
        std::fs::remove_dir(&dir).unwrap();
    }
}
