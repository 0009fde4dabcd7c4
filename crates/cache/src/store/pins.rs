//! Pins: the pods that use a model, so it is never evicted; bounded per pod, and dropped once the pod is
//! gone from the node.

use std::collections::HashSet;

use super::{CachedModel, Store, now_secs};
use crate::error::CacheError;

/// What [`Store::pin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Pinned (or already was).
    Pinned,
    /// The model is not ready here.
    NotCached,
    /// The pod already holds this many pins, its limit.
    TooMany(usize),
}

impl Store {
    /// Pins a model for a pod, which may hold at most `max_per_pod` pins.
    pub fn pin(&mut self, model: &str, pod: &str, max_per_pod: usize) -> Result<Pinned, CacheError> {
        self.locked(|s| {
            if !s.index.models.get(model).is_some_and(CachedModel::is_ready) {
                return Ok(Pinned::NotCached);
            }
            let held = s.index.models.iter().filter(|(n, m)| *n != model && m.pinned_by.contains(pod)).count();
            if held >= max_per_pod {
                return Ok(Pinned::TooMany(held));
            }
            let now = now_secs();
            if let Some(m) = s.index.models.get_mut(model) {
                m.pinned_by.insert(pod.to_owned());
                m.pinned_at.insert(pod.to_owned(), now);
                m.last_used = now;
            }
            Ok(Pinned::Pinned)
        })
    }

    /// Removes a pod's pin; `false` if it had none.
    pub fn unpin(&mut self, model: &str, pod: &str) -> Result<bool, CacheError> {
        self.locked(|s| {
            Ok(s.index.models.get_mut(model).is_some_and(|m| {
                m.pinned_at.remove(pod);
                m.pinned_by.remove(pod)
            }))
        })
    }

    /// Drops the pins of pods that are not `live`, made before `listed_at` (seconds since the epoch; a
    /// pin made after the pods were listed may belong to a pod the list could not show yet). Returns
    /// the `(model, pod)` pins dropped.
    pub fn retain_pins(&mut self, live: &HashSet<String>, listed_at: u64) -> Result<Vec<(String, String)>, CacheError> {
        self.locked(|s| {
            let mut dropped = Vec::new();
            for (name, m) in &mut s.index.models {
                let gone: Vec<String> = m
                    .pinned_by
                    .iter()
                    .filter(|p| !live.contains(*p) && m.pinned_at.get(*p).copied().unwrap_or(0) < listed_at)
                    .cloned()
                    .collect();
                for pod in gone {
                    m.pinned_by.remove(&pod);
                    m.pinned_at.remove(&pod);
                    dropped.push((name.clone(), pod));
                }
            }
            Ok(dropped)
        })
    }
}
