//! The node-local store: content-addressed blobs (the same bytes kept once, whatever model names
//! them), each model a directory of relative symlinks into them, and an index of models with their last
//! use, the pods pinning them and the fetches under way. A disk budget — the configured one, or less
//! when the file system has less room — is kept by evicting the least recently used unpinned models.
//!
//! Layout under the root (pods mount it read-only; see docs/model-cache.md):
//! `blobs/sha256/<digest>` published files, read-only; `models/<model>/<path>` symlinks to them;
//! `partial/` downloads in progress; `index.json` the model index; `.lock` the lock every process
//! sharing the root takes around a change of the index.
//!
//! Nothing on disk is trusted blindly: a blob is opened without following symlinks and checked for
//! type and size before it is reused or served, and its content is hashed again whenever its inode
//! or change time differs from the ones recorded when it was last verified.

mod pins;
mod verify;

pub use pins::Pinned;
pub use verify::{BlobCheck, Sound, Stamp, hash_blob, sound_blob};

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::CacheError;
use crate::manifest::{FileEntry, Manifest, Source};

/// A cached model as the index records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedModel {
    /// Its files, once linked; empty while its first fetch is under way.
    pub files: Vec<FileEntry>,
    /// Last fetch or use, seconds since the Unix epoch.
    pub last_used: u64,
    /// Pods (namespace/name or UID) that use it; a pinned model is never evicted.
    #[serde(default)]
    pub pinned_by: BTreeSet<String>,
    /// When each pin was made, seconds since the Unix epoch (a pin is dropped once its pod is gone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pinned_at: BTreeMap<String, u64>,
    /// Where its files were read from: who may see it, and where it is fetched again from when damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// A linked blob failed verification and was removed: not ready until fetched again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
    /// A fetch under way (in this or another process sharing the root): its blobs are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetching: Option<Fetching>,
}

/// A fetch under way, recorded in the index so that every process sharing the root counts its bytes
/// and never collects its blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetching {
    /// The files being fetched.
    pub files: Vec<FileEntry>,
    /// When the newest fetch started, seconds since the Unix epoch.
    pub since: u64,
    /// How many fetches of this model are under way.
    pub holders: u32,
}

impl CachedModel {
    /// Total bytes of its linked files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().fold(0u64, |t, f| t.saturating_add(f.size))
    }

    /// Whether its files are linked and usable (a first fetch may still be under way otherwise, or a
    /// damaged blob be fetched again).
    pub fn is_ready(&self) -> bool {
        !self.files.is_empty() && !self.damaged
    }

    /// The manifest it was fetched with, when its source is known.
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        let source = self.source.clone()?;
        Some(Manifest { model: name.to_owned(), source, files: self.files.clone() })
    }

    fn blobs(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().chain(self.fetching.iter().flat_map(|f| &f.files))
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Index {
    models: BTreeMap<String, CachedModel>,
    /// Blobs whose content matched their digest, with the stamp they had then.
    #[serde(default)]
    verified: BTreeMap<String, Stamp>,
}

/// What [`Store::collect_garbage`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs no model refers to.
    pub blobs: usize,
    /// Partial downloads no fetch under way refers to.
    pub partials: usize,
    /// Staging or leftover directories under `models/`.
    pub dirs: usize,
    /// Fetches recorded by a process that stopped long ago.
    pub stale_fetches: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// The store on disk.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    budget: u64,
    /// Bytes always left free on the file system.
    keep_free: u64,
    index: Index,
    /// The index file as last read or written, to notice another process's change.
    index_seen: Option<(u64, i128)>,
    lock: File,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

/// Flushes a directory entry (a rename or a new file) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Opens a file for reading without following a symlink in its last component.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)
}

/// Opens (or creates) a lock file without following a symlink in its last component.
pub(crate) fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Removes a file or symlink; absent is fine.
fn remove_file(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io { path: path.to_owned(), source: e }),
        _ => Ok(()),
    }
}

/// Bytes the file system lets an unprivileged writer still use at `path`.
pub fn free_bytes(path: &Path) -> Result<u64, CacheError> {
    let s = rustix::fs::statvfs(path)
        .map_err(|e| CacheError::Io { path: path.to_owned(), source: std::io::Error::from(e) })?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Bytes a file occupies on disk (a sparse partial file occupies what has been written).
fn allocated(m: &fs::Metadata) -> u64 {
    m.blocks().saturating_mul(512)
}

impl Store {
    /// Opens (or creates) the store at `root` with a disk budget in bytes. An index that cannot be
    /// parsed is kept beside as `index.json.corrupt` and rebuilt from `models/` and `blobs/`.
    pub fn open(root: impl Into<PathBuf>, budget: u64) -> Result<Store, CacheError> {
        let root = root.into();
        for dir in ["blobs/sha256", "models", "partial"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io(&path))?;
        }
        let lock_path = root.join(".lock");
        // A store mounted read-only (`ls` in a pod) is read under a shared lock on the existing file.
        let lock = open_lock_file(&lock_path).or_else(|_| open_nofollow(&lock_path)).map_err(io(&lock_path))?;
        let mut store = Store { root, budget, keep_free: 0, index: Index::default(), index_seen: None, lock };
        store.reload()?;
        Ok(store)
    }

    /// Leaves at least `bytes` free on the file system, whatever the budget.
    pub fn keep_free(mut self, bytes: u64) -> Self {
        self.keep_free = bytes;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configured disk budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Where a published blob lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// Where a download of a blob from one source ([`crate::fetch::source_id`]) keeps its bytes:
    /// `partial/<digest>-<source>` with `.part`, `.chunks` and `.lock` beside.
    pub fn partial_path(&self, sha256: &str, source: &str) -> PathBuf {
        let source = source.get(..16).unwrap_or(source);
        self.root.join("partial").join(format!("{sha256}-{source}"))
    }

    /// The models, including ones whose first fetch is still under way ([`CachedModel::is_ready`]).
    pub fn models(&self) -> &BTreeMap<String, CachedModel> {
        &self.index.models
    }

    /// Reads the index again if another process changed it.
    pub fn refresh(&mut self) -> Result<(), CacheError> {
        if self.index_changed() { self.reload() } else { Ok(()) }
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The index file's inode and modification time, if it exists.
    fn index_on_disk(&self) -> Option<(u64, i128)> {
        fs::metadata(self.index_path()).ok().map(|m| {
            let s = Stamp::of(&m);
            (s.ino, s.mtime_ns)
        })
    }

    fn index_changed(&self) -> bool {
        self.index_on_disk() != self.index_seen
    }

    /// The index on disk: default when there is none, `Err` with the parser's message when corrupt.
    fn parse_index(&self) -> Result<Result<Index, serde_json::Error>, CacheError> {
        let path = self.index_path();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(serde_json::from_str(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ok(Index::default())),
            Err(e) => Err(CacheError::Io { path, source: e }),
        }
    }

    /// Runs `change` on the index with the root's lock held, the index read again first if another
    /// process changed it, and saved after.
    fn locked<T>(&mut self, change: impl FnOnce(&mut Store) -> Result<T, CacheError>) -> Result<T, CacheError> {
        let lock_path = self.root.join(".lock");
        self.lock.lock().map_err(io(&lock_path))?;
        let result = (|| {
            if self.index_changed() || self.index_seen.is_none() {
                self.index = self.read_index()?;
            }
            // What an error says did not happen did not happen: the change is undone in memory too.
            let before = self.index.clone();
            let out = change(self).and_then(|out| self.save_index().map(|()| out));
            if out.is_err() {
                self.index = before;
            }
            out
        })();
        let _ = self.lock.unlock();
        result
    }

    /// Reads the index under a shared lock, writing nothing; a corrupt one is rebuilt under the
    /// exclusive lock.
    fn reload(&mut self) -> Result<(), CacheError> {
        let lock_path = self.root.join(".lock");
        self.lock.lock_shared().map_err(io(&lock_path))?;
        let read = self.parse_index();
        let seen = self.index_on_disk();
        let _ = self.lock.unlock();
        match read? {
            Ok(index) => {
                self.index = index;
                self.index_seen = seen;
                Ok(())
            }
            Err(_) => {
                self.index_seen = None;
                self.locked(|_| Ok(()))
            }
        }
    }

    /// The index on disk; a corrupt one is kept aside and rebuilt (the root's lock is held).
    fn read_index(&mut self) -> Result<Index, CacheError> {
        self.parse_index()?.or_else(|e| {
            let (path, aside) = (self.index_path(), self.root.join("index.json.corrupt"));
            tracing::warn!(index = %path.display(), error = %e, kept = %aside.display(),
                "The model index is corrupt; rebuilding it from models/ and blobs/ (pins are lost).");
            fs::rename(&path, &aside).map_err(io(&path))?;
            self.rebuild_index()
        })
    }

    /// An index from what `models/` links to: every model directory whose links all lead to blobs of
    /// the digest they name. Blobs will be hashed again before use (no stamps survive).
    fn rebuild_index(&self) -> Result<Index, CacheError> {
        let models_dir = self.root.join("models");
        let mut index = Index::default();
        let entries = fs::read_dir(&models_dir).map_err(io(&models_dir))?;
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let mut files = Vec::new();
            if self.collect_links(&entry.path(), "", &mut files).is_ok() && !files.is_empty() {
                files.sort_by(|a: &FileEntry, b| a.path.cmp(&b.path));
                index.models.insert(name, CachedModel { files, ..CachedModel::default() });
            }
        }
        Ok(index)
    }

    fn collect_links(&self, dir: &Path, prefix: &str, files: &mut Vec<FileEntry>) -> Result<(), ()> {
        for entry in fs::read_dir(dir).map_err(|_| ())?.flatten() {
            let name = entry.file_name().into_string().map_err(|_| ())?;
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let kind = entry.file_type().map_err(|_| ())?;
            if kind.is_dir() {
                self.collect_links(&entry.path(), &path, files)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(|_| ())?;
                let digest = target.file_name().and_then(|d| d.to_str()).ok_or(())?.to_owned();
                let blob = open_nofollow(&self.blob_path(&digest)).and_then(|f| f.metadata()).map_err(|_| ())?;
                if digest.len() != 64 || !blob.is_file() {
                    return Err(());
                }
                files.push(FileEntry { path, size: blob.len(), sha256: digest });
            } else {
                return Err(());
            }
        }
        Ok(())
    }

    fn save_index(&mut self) -> Result<(), CacheError> {
        let path = self.index_path();
        let tmp = self.root.join(".index.json.tmp");
        let text = serde_json::to_vec_pretty(&self.index)
            .map_err(|e| CacheError::Index { path: path.clone(), message: e.to_string() })?;
        remove_file(&tmp)?;
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.root)?;
        self.index_seen = self.index_on_disk();
        Ok(())
    }

    /// The sources ([`crate::fetch::source_id`]) the ready models holding a blob read it from.
    pub fn blob_sources(&self, sha256: &str) -> HashSet<String> {
        self.index
            .models
            .values()
            .filter(|m| m.is_ready())
            .filter_map(|m| Some((m.source.as_ref()?, m.files.iter().find(|f| f.sha256 == sha256)?)))
            .filter_map(|(source, f)| crate::fetch::source_id(source, &f.path))
            .collect()
    }

    /// Digests any model refers to, linked or being fetched.
    fn referenced(&self) -> HashSet<&str> {
        self.index.models.values().flat_map(CachedModel::blobs).map(|f| f.sha256.as_str()).collect()
    }

    /// Bytes of the blobs the ready models link, each counted once.
    pub fn used_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.index
            .models
            .values()
            .flat_map(|m| &m.files)
            .filter(|f| seen.insert(f.sha256.as_str()))
            .fold(0u64, |t, f| t.saturating_add(f.size))
    }

    /// Bytes partial downloads occupy on disk.
    pub fn partial_bytes(&self) -> u64 {
        self.partials().iter().fold(0u64, |t, (_, m)| t.saturating_add(allocated(m)))
    }

    /// Partial files: (digest, metadata), one row per file (`.part`, `.chunks`, `.lock`).
    fn partials(&self) -> Vec<(String, fs::Metadata)> {
        let dir = self.root.join("partial");
        let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let digest = name.split(['.', '-']).next()?.to_owned();
                Some((digest, e.metadata().ok()?))
            })
            .collect()
    }

    /// Bytes the store may hold once every fetch under way has finished: the indexed models' blobs
    /// (linked or being fetched) and `extra` files, each counted once.
    fn committed_bytes(&self, extra: &[FileEntry]) -> u64 {
        self.committed_by(|_, _| true, extra)
    }

    /// Bytes of the blobs of the indexed models that `keep` keeps (linked or being fetched) and of `extra`,
    /// each counted once.
    fn committed_by(&self, keep: impl Fn(&str, &CachedModel) -> bool, extra: &[FileEntry]) -> u64 {
        let mut seen = HashSet::new();
        self.index
            .models
            .iter()
            .filter(|(name, m)| keep(name, m))
            .flat_map(|(_, m)| m.blobs())
            .chain(extra)
            .filter(|f| seen.insert(f.sha256.as_str()))
            .fold(0u64, |t, f| t.saturating_add(f.size))
    }

    /// What the store may grow to now: the budget, or less when the file system is fuller — what the
    /// store's referenced blobs and partials occupy plus the free space, less `keep_free`.
    fn capacity(&self) -> Result<u64, CacheError> {
        let referenced = self.referenced();
        let mut on_disk = 0u64;
        for digest in &referenced {
            if let Ok(m) = fs::symlink_metadata(self.blob_path(digest)) {
                on_disk = on_disk.saturating_add(m.len());
            }
        }
        for (digest, m) in self.partials() {
            if referenced.contains(digest.as_str()) {
                on_disk = on_disk.saturating_add(allocated(&m));
            }
        }
        let disk = on_disk.saturating_add(free_bytes(&self.root)?).saturating_sub(self.keep_free);
        Ok(disk.min(self.budget))
    }

    /// Makes room for `manifest` within the budget and the file system's free space, counting the
    /// fetches under way, and records the fetch in the index until [`Self::finish_fetch`]. Removes
    /// stray partial downloads first, then evicts least recently used unpinned models (never
    /// `manifest`'s own, nor one being fetched) until it fits; returns the evicted names, or an error
    /// saying what blocks when even that is not enough.
    pub fn make_room(&mut self, manifest: &Manifest) -> Result<Vec<String>, CacheError> {
        self.locked(|s| {
            let mut evicted = Vec::new();
            let mut strays_removed = false;
            loop {
                let without = s.committed_bytes(&[]);
                let with = s.committed_bytes(&manifest.files);
                let capacity = s.capacity()?;
                if with <= capacity {
                    let now = now_secs();
                    let entry = s
                        .index
                        .models
                        .entry(manifest.model.clone())
                        .or_insert_with(|| CachedModel { last_used: now, ..CachedModel::default() });
                    // Who may see it while its first fetch runs: the source it is fetched from.
                    entry.source.get_or_insert_with(|| manifest.source.clone());
                    let holders = entry.fetching.as_ref().map_or(0, |f| f.holders);
                    entry.fetching = Some(Fetching { files: manifest.files.clone(), since: now, holders: holders + 1 });
                    return Ok(evicted);
                }
                if !strays_removed {
                    strays_removed = true;
                    if s.remove_strays(Duration::ZERO)?.2 > 0 {
                        continue;
                    }
                }
                // Nothing is evicted unless evicting every model that may go makes the new one fit.
                if s.committed_by(|name, m| !s.evictable(name, m, manifest), &manifest.files) > capacity {
                    return Err(s.budget_error(manifest, with - without, without, capacity));
                }
                let victim = s
                    .index
                    .models
                    .iter()
                    .filter(|(name, m)| s.evictable(name, m, manifest))
                    .min_by_key(|(name, m)| (m.last_used, (*name).clone()))
                    .map(|(name, _)| name.clone());
                let Some(victim) = victim else {
                    return Err(s.budget_error(manifest, with - without, without, capacity));
                };
                s.drop_model(&victim)?;
                evicted.push(victim);
            }
        })
    }

    fn evictable(&self, name: &str, m: &CachedModel, manifest: &Manifest) -> bool {
        m.pinned_by.is_empty() && m.fetching.is_none() && name != manifest.model
    }

    fn budget_error(&self, manifest: &Manifest, needed: u64, used: u64, capacity: u64) -> CacheError {
        let named = |keep: &dyn Fn(&CachedModel) -> bool| -> Vec<String> {
            self.index.models.iter().filter(|(n, m)| *n != &manifest.model && keep(m)).map(|(n, _)| n.clone()).collect()
        };
        let pinned = named(&|m| !m.pinned_by.is_empty());
        let fetching = named(&|m| m.fetching.is_some());
        let mut held = Vec::new();
        if !pinned.is_empty() {
            held.push(format!("pinned: {}", pinned.join(", ")));
        }
        if !fetching.is_empty() {
            held.push(format!("reserved by fetches under way: {}", fetching.join(", ")));
        }
        let why = if held.is_empty() {
            "nothing else can be evicted".to_owned()
        } else {
            format!("what cannot be evicted is {}", held.join("; "))
        };
        CacheError::Budget { model: manifest.model.clone(), needed, used, capacity, budget: self.budget, why }
    }

    /// Ends a fetch recorded by [`Self::make_room`]. After a failure the model's entry is dropped when
    /// it has no linked files; the blobs and partials it leaves are kept for a retry to reuse, counted
    /// as strays, and removed when room is needed or by [`Self::collect_garbage`].
    pub fn finish_fetch(&mut self, model: &str, succeeded: bool) -> Result<(), CacheError> {
        self.locked(|s| {
            let Some(m) = s.index.models.get_mut(model) else { return Ok(()) };
            if succeeded {
                // Linked: whatever a killed earlier fetch of this model recorded is done with too.
                m.fetching = None;
            } else if let Some(f) = &mut m.fetching {
                f.holders = f.holders.saturating_sub(1);
                if f.holders == 0 {
                    m.fetching = None;
                }
            }
            if !succeeded && m.files.is_empty() && m.fetching.is_none() {
                s.index.models.remove(model);
            }
            Ok(())
        })
    }

    /// Removes a model and the blobs no other model (or fetch under way) uses.
    pub fn remove_model(&mut self, name: &str) -> Result<(), CacheError> {
        self.locked(|s| s.drop_model(name))
    }

    fn drop_model(&mut self, name: &str) -> Result<(), CacheError> {
        let Some(model) = self.index.models.remove(name) else { return Ok(()) };
        remove_path(&self.root.join("models").join(name))?;
        let still_used = self.referenced();
        let gone: Vec<String> =
            model.blobs().map(|f| f.sha256.clone()).filter(|d| !still_used.contains(d.as_str())).collect();
        for digest in gone {
            self.index.verified.remove(&digest);
            remove_file(&self.blob_path(&digest))?;
        }
        Ok(())
    }

    /// Publishes a fully written and verified file: flushed, made read-only, renamed into `blobs/`,
    /// its stamp recorded as verified.
    pub fn publish_blob(&mut self, partial: &Path, sha256: &str) -> Result<PathBuf, CacheError> {
        let file = open_nofollow(partial).map_err(io(partial))?;
        file.sync_all().map_err(io(partial))?;
        let mut perms = file.metadata().map_err(io(partial))?.permissions();
        perms.set_readonly(true);
        file.set_permissions(perms).map_err(io(partial))?;
        let blob = self.blob_path(sha256);
        if fs::symlink_metadata(&blob).is_ok_and(|m| m.is_dir()) {
            // A rename replaces a file or a symlink, not a directory.
            remove_path(&blob)?;
        }
        fs::rename(partial, &blob).map_err(io(&blob))?;
        sync_dir(&self.root.join("blobs/sha256"))?;
        let stamp = Stamp::of(&file.metadata().map_err(io(&blob))?);
        self.mark_verified(sha256, stamp)?;
        // Models damaged by this blob's loss are whole again once all their blobs are back.
        self.locked(|s| {
            let present = |d: &str| fs::symlink_metadata(s.blob_path(d)).is_ok_and(|m| m.is_file());
            let healed: Vec<String> = s
                .index
                .models
                .iter()
                .filter(|(_, m)| m.damaged && m.files.iter().all(|f| present(&f.sha256)))
                .map(|(n, _)| n.clone())
                .collect();
            for name in healed {
                if let Some(m) = s.index.models.get_mut(&name) {
                    m.damaged = false;
                }
            }
            Ok(())
        })?;
        Ok(blob)
    }

    /// Makes `models/<model>/` show the manifest's files (every blob must be published) and records the
    /// model as just used. The directory is built beside the old one and exchanged with it in one
    /// `renameat2(RENAME_EXCHANGE)`: a reader sees the old files or the new, never neither.
    pub fn link_model(&mut self, manifest: &Manifest) -> Result<(), CacheError> {
        let models = self.root.join("models");
        let staging = models.join(format!(".staging-{}", manifest.model));
        remove_path(&staging)?;
        let built = (|| {
            fs::create_dir(&staging).map_err(io(&staging))?;
            for f in &manifest.files {
                let link = staging.join(&f.path);
                let parent = link.parent().unwrap_or(&staging).to_owned();
                fs::create_dir_all(&parent).map_err(io(&parent))?;
                // models/<model>/<a>/<b> → ../../../blobs/sha256/<digest>: one `..` per directory below the root.
                let depth = f.path.split('/').count() + 1;
                let target = PathBuf::from("../".repeat(depth)).join("blobs/sha256").join(&f.sha256);
                std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
            }
            sync_dir(&staging)
        })();
        if let Err(e) = built {
            let _ = remove_path(&staging);
            return Err(e);
        }
        let live = models.join(&manifest.model);
        let swapped = match fs::symlink_metadata(&live) {
            Ok(m) if m.is_dir() => rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staging,
                rustix::fs::CWD,
                &live,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| CacheError::Io { path: live.clone(), source: e.into() })
            .and_then(|()| remove_path(&staging)),
            Ok(_) => remove_path(&live).and_then(|()| fs::rename(&staging, &live).map_err(io(&live))),
            Err(_) => fs::rename(&staging, &live).map_err(io(&live)),
        };
        if let Err(e) = swapped {
            let _ = remove_path(&staging);
            return Err(e);
        }
        sync_dir(&models)?;
        let model = manifest.model.clone();
        let files = manifest.files.clone();
        let source = manifest.source.clone();
        self.locked(move |s| {
            let now = now_secs();
            let entry = s.index.models.entry(model).or_default();
            entry.files = files;
            entry.source = Some(source);
            entry.damaged = false;
            entry.last_used = now;
            Ok(())
        })
    }

    /// Marks a model as used now.
    pub fn touch(&mut self, model: &str) -> Result<bool, CacheError> {
        self.locked(|s| {
            let Some(m) = s.index.models.get_mut(model) else { return Ok(false) };
            m.last_used = now_secs();
            Ok(true)
        })
    }

    /// Removes what no model needs: fetches recorded more than `stale_after` ago by a process that is
    /// gone (`active` names this process's fetches under way), blobs no model refers to, partial
    /// downloads of no fetch under way that were last written more than `stale_after` ago, and staging
    /// or unknown directories under `models/`.
    pub fn collect_garbage(&mut self, stale_after: Duration, active: &HashSet<String>) -> Result<GcReport, CacheError> {
        self.locked(|s| {
            let mut report = GcReport::default();
            let cutoff = now_secs().saturating_sub(stale_after.as_secs());
            for (name, m) in &mut s.index.models {
                if m.fetching.as_ref().is_some_and(|f| f.since < cutoff) && !active.contains(name) {
                    m.fetching = None;
                    report.stale_fetches += 1;
                }
            }
            s.index.models.retain(|_, m| m.is_ready() || m.fetching.is_some());
            (report.blobs, report.partials, report.bytes) = s.remove_strays(stale_after)?;
            let models_dir = s.root.join("models");
            for entry in fs::read_dir(&models_dir).map_err(io(&models_dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !s.index.models.get(&name).is_some_and(CachedModel::is_ready) {
                    remove_path(&entry.path())?;
                    report.dirs += 1;
                }
            }
            Ok(report)
        })
    }

    /// Blobs (kind 0) and partial download files (kind 1) no model refers to, last written at least
    /// `age` ago: `(kind, path, digest, metadata)`.
    fn strays(&self, age: Duration) -> Vec<(usize, PathBuf, String, fs::Metadata)> {
        let referenced = self.referenced();
        let now = SystemTime::now();
        let old =
            |m: &fs::Metadata| m.modified().ok().and_then(|t| now.duration_since(t).ok()).is_none_or(|a| a >= age);
        let mut found = Vec::new();
        for (kind, sub) in ["blobs/sha256", "partial"].into_iter().enumerate() {
            let Ok(entries) = fs::read_dir(self.root.join(sub)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = name.split(['.', '-']).next().unwrap_or_default().to_owned();
                if let Ok(m) = entry.metadata()
                    && !referenced.contains(digest.as_str())
                    && old(&m)
                {
                    found.push((kind, entry.path(), digest, m));
                }
            }
        }
        found
    }

    /// Removes the [`Self::strays`] of at least `age`; returns how many blobs and partial files were
    /// removed, and the bytes freed.
    fn remove_strays(&mut self, age: Duration) -> Result<(usize, usize, u64), CacheError> {
        let mut counts = [0usize; 2];
        let mut bytes = 0u64;
        for (kind, path, digest, m) in self.strays(age) {
            remove_path(&path)?;
            self.index.verified.remove(&digest);
            bytes = bytes.saturating_add(allocated(&m));
            counts[kind] += 1;
        }
        let root = self.root.join("blobs/sha256");
        self.index.verified.retain(|d, _| root.join(d).exists());
        Ok((counts[0], counts[1], bytes))
    }

    /// Bytes of blobs and partial downloads no model refers to (left by failed fetches).
    pub fn stray_bytes(&self) -> u64 {
        self.strays(Duration::ZERO).iter().fold(0u64, |t, (_, _, _, m)| t.saturating_add(allocated(m)))
    }
}

/// Removes a file, symlink or directory tree without following symlinks.
fn remove_path(path: &Path) -> Result<(), CacheError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::Io { path: path.to_owned(), source: e }),
    }
}
