//! Places counted per key within a total: one client address's connections, one caller's streams. A
//! [`Slot`] gives its place back when dropped; an entry goes when its last slot does.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// At most `total` places at once (if capped), at most `per_key` for one key (if capped).
#[derive(Debug)]
pub struct Slots<K: Eq + Hash + Clone> {
    total: Option<usize>,
    per_key: Option<usize>,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// A place taken by [`Slots::try_take`].
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// Slots with these caps (`None`: uncapped).
    pub fn new(total: Option<usize>, per_key: Option<usize>) -> Arc<Self> {
        Arc::new(Slots { total, per_key, open: Mutex::new((0, HashMap::new())) })
    }

    /// A place for `key`, unless the key or the total is at its cap.
    pub fn try_take(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_key) = &mut *open;
        let mine = by_key.get(key).copied().unwrap_or(0);
        if self.total.is_some_and(|cap| *total >= cap) || self.per_key.is_some_and(|cap| mine >= cap) {
            return None;
        }
        *total += 1;
        by_key.insert(key.clone(), mine + 1);
        Some(Slot { slots: Arc::clone(self), key: key.clone() })
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_key) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_cannot_take_every_place_and_places_come_back() {
        let slots = Slots::new(Some(4), Some(2));
        let a1 = slots.try_take(&"a").unwrap();
        let _a2 = slots.try_take(&"a").unwrap();
        assert!(slots.try_take(&"a").is_none(), "a is at its cap");
        let _b1 = slots.try_take(&"b").unwrap();
        let _b2 = slots.try_take(&"b").unwrap();
        assert!(slots.try_take(&"c").is_none(), "the total is reached");
        drop(a1);
        assert!(slots.try_take(&"c").is_some());
    }
}
