//! The node-local store: content-addressed blobs (the same bytes kept once, whatever model names
//! them), each model a directory of relative symlinks into them, and an index of models with their last
//! use and the pods pinning them. A disk budget is kept by evicting the least recently used unpinned
//! models; a pinned model is never evicted.
//!
//! Layout under the root (pods mount it read-only; see docs/model-cache.md):
//! `blobs/sha256/<digest>` published files, read-only; `models/<model>/<path>` symlinks to them;
//! `partial/` downloads in progress; `index.json` the model index.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::CacheError;
use crate::manifest::{FileEntry, Manifest};

/// A cached model as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedModel {
    /// Its files.
    pub files: Vec<FileEntry>,
    /// Last fetch or use, seconds since the Unix epoch.
    pub last_used: u64,
    /// Pods (namespace/name or UID) that use it; a pinned model is never evicted.
    #[serde(default)]
    pub pinned_by: BTreeSet<String>,
}

impl CachedModel {
    /// Total bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    models: BTreeMap<String, CachedModel>,
}

/// The store on disk.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    budget: u64,
    index: Index,
    /// Fetches under way: model → (how many, its blobs and their sizes). Their bytes count against the
    /// budget before they are stored, and their blobs are never removed from under them.
    reserved: BTreeMap<String, (usize, HashMap<String, u64>)>,
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

impl Store {
    /// Opens (or creates) the store at `root` with a disk budget in bytes.
    pub fn open(root: impl Into<PathBuf>, budget: u64) -> Result<Store, CacheError> {
        let root = root.into();
        for dir in ["blobs/sha256", "models", "partial"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io(&path))?;
        }
        let index_path = root.join("index.json");
        let index = match fs::read_to_string(&index_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| CacheError::Index { path: index_path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(CacheError::Io { path: index_path, source: e }),
        };
        Ok(Store { root, budget, index, reserved: BTreeMap::new() })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The disk budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Where a published blob lives.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// Where a download in progress keeps its bytes.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(sha256)
    }

    /// Whether a blob is published.
    pub fn has_blob(&self, sha256: &str) -> bool {
        self.blob_path(sha256).is_file()
    }

    /// The cached models.
    pub fn models(&self) -> &BTreeMap<String, CachedModel> {
        &self.index.models
    }

    /// Bytes of the blobs the index refers to, each counted once.
    pub fn used_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.index
            .models
            .values()
            .flat_map(|m| &m.files)
            .filter(|f| seen.insert(f.sha256.as_str()))
            .map(|f| f.size)
            .sum()
    }

    /// Bytes the store holds once every fetch under way has finished: the indexed models' blobs and the
    /// reserved ones, each counted once; `extra` files are counted too.
    fn committed_bytes(&self, extra: &[FileEntry]) -> u64 {
        let indexed = self.index.models.values().flat_map(|m| &m.files).map(|f| (f.sha256.as_str(), f.size));
        let reserved = self.reserved.values().flat_map(|(_, blobs)| blobs.iter().map(|(d, &s)| (d.as_str(), s)));
        let extra = extra.iter().map(|f| (f.sha256.as_str(), f.size));
        let mut seen = HashSet::new();
        indexed.chain(reserved).chain(extra).filter(|(d, _)| seen.insert(*d)).map(|(_, s)| s).sum()
    }

    /// Makes room for `manifest` within the budget, counting the fetches under way, and reserves its
    /// bytes until [`Self::release`]. Evicts least recently used unpinned models (never `manifest`'s
    /// own) until it fits; returns the evicted names, or an error naming what blocks when even that is
    /// not enough.
    pub fn make_room(&mut self, manifest: &Manifest) -> Result<Vec<String>, CacheError> {
        let mut evicted = Vec::new();
        loop {
            let without = self.committed_bytes(&[]);
            let with = self.committed_bytes(&manifest.files);
            if with <= self.budget {
                let entry = self.reserved.entry(manifest.model.clone()).or_default();
                entry.0 += 1;
                entry.1.extend(manifest.files.iter().map(|f| (f.sha256.clone(), f.size)));
                return Ok(evicted);
            }
            let (needed, used) = (with - without, without);
            let victim = self
                .index
                .models
                .iter()
                .filter(|(name, m)| m.pinned_by.is_empty() && *name != &manifest.model)
                .min_by_key(|(name, m)| (m.last_used, (*name).clone()))
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else {
                let pinned = self.index.models.iter().filter(|(_, m)| !m.pinned_by.is_empty()).map(|(n, _)| n.clone());
                return Err(CacheError::Budget {
                    model: manifest.model.clone(),
                    needed,
                    used,
                    budget: self.budget,
                    pinned: pinned.collect(),
                });
            };
            self.remove_model(&victim)?;
            evicted.push(victim);
        }
    }

    /// Ends a reservation made by [`Self::make_room`] (the fetch finished or failed).
    pub fn release(&mut self, model: &str) {
        if let Some(entry) = self.reserved.get_mut(model) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                self.reserved.remove(model);
            }
        }
    }

    /// Removes a model and the blobs no other model (or fetch under way) uses.
    pub fn remove_model(&mut self, name: &str) -> Result<(), CacheError> {
        let Some(model) = self.index.models.remove(name) else { return Ok(()) };
        self.save_index()?;
        let dir = self.root.join("models").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let indexed = self.index.models.values().flat_map(|m| &m.files).map(|f| f.sha256.as_str());
        let reserved = self.reserved.values().flat_map(|(_, blobs)| blobs.keys().map(String::as_str));
        let still_used: HashSet<&str> = indexed.chain(reserved).collect();
        for f in &model.files {
            if !still_used.contains(f.sha256.as_str()) {
                let blob = self.blob_path(&f.sha256);
                match fs::remove_file(&blob) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CacheError::Io { path: blob, source: e }),
                }
            }
        }
        Ok(())
    }

    /// Publishes a fully written and verified file: flushed, made read-only, renamed into `blobs/`.
    pub fn publish_blob(&self, partial: &Path, sha256: &str) -> Result<PathBuf, CacheError> {
        let file = File::open(partial).map_err(io(partial))?;
        file.sync_all().map_err(io(partial))?;
        let mut perms = file.metadata().map_err(io(partial))?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(partial, perms).map_err(io(partial))?;
        let blob = self.blob_path(sha256);
        fs::rename(partial, &blob).map_err(io(&blob))?;
        sync_dir(&self.root.join("blobs/sha256"))?;
        Ok(blob)
    }

    /// Makes `models/<model>/` show the manifest's files (every blob must be published) and records the
    /// model as just used. The directory is built beside the old one and swapped in.
    pub fn link_model(&mut self, manifest: &Manifest) -> Result<(), CacheError> {
        let models = self.root.join("models");
        let staging = models.join(format!(".{}.staging", manifest.model));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        for f in &manifest.files {
            let link = staging.join(&f.path);
            let parent = link.parent().unwrap_or(&staging).to_owned();
            fs::create_dir_all(&parent).map_err(io(&parent))?;
            // models/<model>/<a>/<b> → ../../../blobs/sha256/<digest>: one `..` per directory below the root.
            let depth = f.path.split('/').count() + 1;
            let target = PathBuf::from("../".repeat(depth)).join("blobs/sha256").join(&f.sha256);
            symlink(&target, &link)?;
        }
        let live = models.join(&manifest.model);
        if live.exists() {
            let old = models.join(format!(".{}.old", manifest.model));
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            fs::rename(&live, &old).map_err(io(&live))?;
            fs::rename(&staging, &live).map_err(io(&live))?;
            fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            fs::rename(&staging, &live).map_err(io(&live))?;
        }
        sync_dir(&models)?;
        let pinned_by = self.index.models.get(&manifest.model).map(|m| m.pinned_by.clone()).unwrap_or_default();
        self.index.models.insert(
            manifest.model.clone(),
            CachedModel { files: manifest.files.clone(), last_used: now_secs(), pinned_by },
        );
        self.save_index()
    }

    /// Marks a model as used now.
    pub fn touch(&mut self, model: &str) -> Result<bool, CacheError> {
        let Some(m) = self.index.models.get_mut(model) else { return Ok(false) };
        m.last_used = now_secs();
        self.save_index().map(|()| true)
    }

    /// Pins a model for a pod; `false` if the model is not cached.
    pub fn pin(&mut self, model: &str, pod: &str) -> Result<bool, CacheError> {
        let Some(m) = self.index.models.get_mut(model) else { return Ok(false) };
        m.pinned_by.insert(pod.to_owned());
        m.last_used = now_secs();
        self.save_index().map(|()| true)
    }

    /// Removes a pod's pin.
    pub fn unpin(&mut self, model: &str, pod: &str) -> Result<bool, CacheError> {
        let Some(m) = self.index.models.get_mut(model) else { return Ok(false) };
        let removed = m.pinned_by.remove(pod);
        self.save_index().map(|()| removed)
    }

    fn save_index(&self) -> Result<(), CacheError> {
        let path = self.root.join("index.json");
        let tmp = self.root.join(".index.json.tmp");
        let text = serde_json::to_vec_pretty(&self.index)
            .map_err(|e| CacheError::Index { path: path.clone(), message: e.to_string() })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), CacheError> {
    std::os::unix::fs::symlink(target, link).map_err(io(link))
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> Result<(), CacheError> {
    let _ = target;
    Err(CacheError::Io {
        path: link.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "the model cache needs a Unix file system"),
    })
}
