//! Whether a stored blob can be trusted: the stamp (size, inode, times) it had when last hashed, the
//! checks before it is reused or served, hashing it again off the async threads, and what happens to a
//! blob that fails — removed, and its models marked damaged until fetched again.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Store, io, open_nofollow, remove_path};
use crate::error::CacheError;
use crate::manifest::Manifest;

/// What identifies a blob's bytes on disk when they were last hashed: a rewrite changes the change time
/// (which no user-space call can set back), a replacement the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            ino: m.ino(),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// What [`Store::blob_check`] found.
#[derive(Debug)]
pub enum BlobCheck {
    /// No usable blob (absent, or something that was not a regular file of the right size, now removed).
    Absent,
    /// The blob, opened, as it was when last hashed.
    Verified(File),
    /// The blob, opened: a regular file of the right size, changed since it was last hashed (or never
    /// hashed), to be hashed before use.
    Unverified(File),
}

/// What [`sound_blob`] found.
#[derive(Debug)]
pub enum Sound {
    /// The blob, opened, with its size: its content matches its digest.
    Blob(File, u64),
    /// No blob here (or something unusable in its place, now removed).
    Absent,
    /// A blob whose content did not match its digest, now removed.
    Corrupt,
}

/// Opens a published blob that is sound: checked by [`Store::blob_check`], and hashed again — off the
/// async threads, without the store's lock — when it changed since it was last verified, or always
/// with `rehash`. A blob that fails is removed; its models fetch it again when next asked.
pub async fn sound_blob(
    store: &std::sync::Mutex<Store>,
    sha256: &str,
    size: Option<u64>,
    rehash: bool,
) -> Result<Sound, CacheError> {
    let lock = || store.lock().unwrap_or_else(|p| p.into_inner());
    let (check, path) = {
        let mut s = lock();
        (s.blob_check(sha256, size)?, s.blob_path(sha256))
    };
    let file = match check {
        BlobCheck::Absent => return Ok(Sound::Absent),
        BlobCheck::Verified(file) if !rehash => {
            let len = file.metadata().map_err(io(&path))?.len();
            return Ok(Sound::Blob(file, len));
        }
        BlobCheck::Verified(file) | BlobCheck::Unverified(file) => file,
    };
    let p = path.clone();
    let hashed = tokio::task::spawn_blocking(move || hash_blob(&p))
        .await
        .map_err(|e| CacheError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?
        .map_err(io(&path))?;
    match hashed {
        Some((digest, stamp)) if digest == sha256 => {
            lock().mark_verified(sha256, stamp)?;
            if size.is_some_and(|s| s != stamp.size) {
                return Ok(Sound::Absent);
            }
            Ok(Sound::Blob(file, stamp.size))
        }
        _ => {
            tracing::warn!(blob = %path.display(), "Blob does not match its digest; removed.");
            lock().discard_blob(sha256)?;
            Ok(Sound::Corrupt)
        }
    }
}

/// Hashes a blob without following symlinks; its digest and the stamp it had while it was read, or
/// `None` when it changed during the read.
pub fn hash_blob(path: &Path) -> std::io::Result<Option<(String, Stamp)>> {
    let mut file = open_nofollow(path)?;
    let before = file.metadata()?;
    if !before.is_file() {
        return Ok(None);
    }
    let mut hash = crate::Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let after = Stamp::of(&file.metadata()?);
    Ok((Stamp::of(&before) == after).then(|| (hash.hex(), after)))
}

impl Store {
    /// Opens a published blob without following symlinks: anything at its path that is not a regular
    /// file (of `size` bytes, when given) is removed and reported absent.
    pub fn blob_check(&mut self, sha256: &str, size: Option<u64>) -> Result<BlobCheck, CacheError> {
        let path = self.blob_path(sha256);
        let (file, meta) = match open_nofollow(&path).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobCheck::Absent),
            Err(e) => {
                // ELOOP: a symlink planted where a blob belongs.
                tracing::warn!(blob = %path.display(), error = %e, "Unusable blob removed.");
                self.discard_blob(sha256)?;
                return Ok(BlobCheck::Absent);
            }
        };
        if !meta.is_file() {
            tracing::warn!(blob = %path.display(), "Blob that is not a regular file removed.");
            self.discard_blob(sha256)?;
            return Ok(BlobCheck::Absent);
        }
        let verified = self.index.verified.get(sha256) == Some(&Stamp::of(&meta));
        if size.is_some_and(|s| s != meta.len()) {
            // A verified blob of another size means the caller's size is wrong, not the blob: it is left
            // alone (a manifest cannot remove what others use). An unverified one is hashed to decide.
            return Ok(if verified { BlobCheck::Absent } else { BlobCheck::Unverified(file) });
        }
        Ok(if verified { BlobCheck::Verified(file) } else { BlobCheck::Unverified(file) })
    }

    /// Whether a blob is published, a regular file, and unchanged since it was last hashed.
    pub fn has_blob(&mut self, sha256: &str, size: u64) -> bool {
        matches!(self.blob_check(sha256, Some(size)), Ok(BlobCheck::Verified(_)))
    }

    /// Records that a blob's content matched its digest when it had `stamp`.
    pub fn mark_verified(&mut self, sha256: &str, stamp: Stamp) -> Result<(), CacheError> {
        let digest = sha256.to_owned();
        self.locked(move |s| {
            s.index.verified.insert(digest, stamp);
            Ok(())
        })
    }

    /// Removes a blob whose bytes cannot be trusted; the ready models linking it are marked damaged (out
    /// of the inventory until fetched again, see [`Self::damaged`]).
    pub fn discard_blob(&mut self, sha256: &str) -> Result<(), CacheError> {
        let digest = sha256.to_owned();
        let blob = self.blob_path(sha256);
        self.locked(move |s| {
            for m in s.index.models.values_mut() {
                if m.files.iter().any(|f| f.sha256 == digest) {
                    m.damaged = true;
                }
            }
            s.index.verified.remove(&digest);
            remove_path(&blob)
        })
    }

    /// Damaged models with the manifests to fetch them again (those whose source is recorded).
    pub fn damaged(&self) -> Vec<Manifest> {
        self.index.models.iter().filter(|(_, m)| m.damaged).filter_map(|(name, m)| m.manifest(name)).collect()
    }

    /// Verified blobs with their sizes, for a periodic re-hash.
    pub fn verified_blobs(&self) -> Vec<(String, u64)> {
        self.index.verified.iter().map(|(d, s)| (d.clone(), s.size)).collect()
    }
}
