//! The duplicate filter: which event ids an engine has seen recently.
//!
//! An engine remembers the 64-bit hashes of the last `input.dedup_capacity` event ids it
//! applied, in arrival order (a ring) and in an open-addressing table (linear probing,
//! deletion by shifting back, no tombstones). At the default capacity a busy partition's
//! table is a megabyte, and the ids' hashes are spread over all of it, so each probe is
//! likely a cache miss, and there are two per event: one to claim the new id, one to
//! forget the oldest. On `pipewatch run`'s consuming thread those two misses were the
//! largest single cost of an event. A `HashSet` hides where an entry lives; this table
//! does not, so both slots are fetched ahead of their probes (prefetches):
//! - forgetting the oldest id fetches the slot of the one after it, needed at the next
//!   event;
//! - the engine fetches a new id's slot as soon as the decoder has read the id, the
//!   fourth field of a usual event ([`crate::decode::decode_hinting`]), so the rest of
//!   the decoding hides the wait.

use std::collections::VecDeque;

/// The table's highest load: it grows before more than 4/5 of its slots are taken.
/// Linear probing stays short at that load (about 10 slots, two cache lines, for an id
/// not in the table), and the table is no larger than a `HashSet` of the same ids.
const MAX_LOAD: (usize, usize) = (4, 5);

/// Set in every stored key, so that a zero slot means an empty one.
const OCCUPIED: u64 = 1 << 63;

pub(crate) struct RecentIds {
    /// Confirmed keys, oldest first.
    order: VecDeque<u64>,
    /// Keys (hashes with [`OCCUPIED`] set) or 0; a power of two long.
    slots: Box<[u64]>,
    /// Keys in `slots`: those in `order` and those claimed but not yet confirmed.
    len: usize,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> RecentIds {
        // Sized for a quiet partition and grown on demand: `pipewatch run` keeps an engine
        // per partition, and most see far fewer than `dedup_capacity` recent ids.
        let start = capacity.min(1 << 10);
        RecentIds {
            order: VecDeque::with_capacity(start),
            slots: vec![0; table_size(start)].into_boxed_slice(),
            len: 0,
            capacity,
        }
    }

    /// Claims id hash `h` for an event: false when it is among the recent ids (the event
    /// is a duplicate). One probe serves both the check and the insertion; the claim is
    /// then confirmed once the event is applied, or withdrawn if it is not.
    pub(crate) fn claim(&mut self, h: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = h | OCCUPIED;
        let mask = self.mask();
        let mut i = home(key, mask);
        loop {
            match self.slots[i] {
                0 => break,
                k if k == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
            self.insert(key);
        } else {
            self.slots[i] = key;
        }
        self.len += 1;
        true
    }

    /// Starts fetching the slot where `h` would be claimed, ahead of the claim.
    pub(crate) fn prefetch(&self, h: u64) {
        if self.capacity > 0 {
            prefetch(&self.slots[home(h | OCCUPIED, self.mask())]);
        }
    }

    pub(crate) fn withdraw(&mut self, h: u64) {
        if self.capacity > 0 {
            self.remove(h | OCCUPIED);
        }
    }

    /// Records a claimed id as the newest, forgetting the oldest beyond the capacity.
    pub(crate) fn confirm(&mut self, h: u64) {
        if self.capacity == 0 {
            return;
        }
        self.order.push_back(h | OCCUPIED);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.remove(oldest);
            }
            if let Some(&next) = self.order.front() {
                prefetch(&self.slots[home(next, self.mask())]);
            }
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Puts `key`, known to be absent, in the first empty slot from its home.
    fn insert(&mut self, key: u64) {
        let mask = self.mask();
        let mut i = home(key, mask);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = key;
    }

    /// Removes `key` and moves back the keys after it that may take its place, so that
    /// every key stays reachable from its home without crossing an empty slot.
    fn remove(&mut self, key: u64) {
        let mask = self.mask();
        let mut hole = home(key, mask);
        loop {
            match self.slots[hole] {
                0 => return,
                k if k == key => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut next = (hole + 1) & mask;
        loop {
            let k = self.slots[next];
            if k == 0 {
                break;
            }
            // `k` may fill the hole if its home is not after the hole (going round from
            // the hole to `next`): it is then at least as far from its home as from it.
            let from_home = next.wrapping_sub(home(k, mask)) & mask;
            let from_hole = next.wrapping_sub(hole) & mask;
            if from_home >= from_hole {
                self.slots[hole] = k;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    fn grow(&mut self) {
        let doubled = vec![0; self.slots.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.slots, doubled);
        for key in old.iter().copied().filter(|&k| k != 0) {
            self.insert(key);
        }
    }

    #[cfg(test)]
    fn stored(&self) -> usize {
        self.slots.iter().filter(|&&k| k != 0).count()
    }
}

/// The table's length for `ids` keys: a power of two, kept under [`MAX_LOAD`] with room
/// for one claim beyond them.
fn table_size(ids: usize) -> usize {
    ((ids + 1) * MAX_LOAD.1)
        .div_ceil(MAX_LOAD.0)
        .next_power_of_two()
        .max(8)
}

fn home(key: u64, mask: usize) -> usize {
    key as usize & mask
}

/// Starts bringing `slot`'s cache line in, without waiting for it.
#[inline(always)]
fn prefetch(slot: &u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it reads nothing and cannot fault.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use rand::{Rng, SeedableRng};

    use super::RecentIds;

    /// The filter answers as a plain FIFO of the last `capacity` confirmed ids would, with
    /// claims withdrawn now and then. Ids from a small range land next to each other in
    /// the table (an id's home is its low bits), so long runs of occupied slots, which
    /// wrap round the end, are removed from and shifted back all the time.
    #[test]
    fn recent_ids_remember_exactly_the_last_capacity_confirmed() {
        for capacity in [1, 7, 50, 1_000, 5_000] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(capacity as u64);
            let mut ids = RecentIds::new(capacity);
            let mut fifo: VecDeque<u64> = VecDeque::new();
            let (mut duplicates, mut withdrawn) = (0, 0);
            for round in 0..100 * capacity.max(100) {
                // Ids from a range three times the capacity: some come back while
                // remembered, most after they were forgotten. Every other round, far
                // apart ids that share their low bits collide on purpose.
                let h = match round % 2 {
                    0 => rng.gen_range(0..(capacity as u64 * 3 + 8)),
                    _ => rng.gen_range(0..(capacity as u64 + 8)) << 40 | 5,
                };
                let expected = !fifo.contains(&h);
                assert_eq!(ids.claim(h), expected, "capacity {capacity}, id {h}");
                if !expected {
                    duplicates += 1;
                    continue;
                }
                if rng.gen_ratio(1, 10) {
                    ids.withdraw(h);
                    withdrawn += 1;
                    continue;
                }
                ids.confirm(h);
                fifo.push_back(h);
                if fifo.len() > capacity {
                    fifo.pop_front();
                }
            }
            assert!(duplicates > 0 && withdrawn > 0);
            // Bounded: the table holds what is remembered, and no more.
            assert_eq!(ids.len, fifo.len());
            assert_eq!(ids.stored(), fifo.len());
            assert!(ids.slots.len() <= super::table_size(capacity));
        }
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let mut ids = RecentIds::new(0);
        for _ in 0..3 {
            assert!(ids.claim(42));
            ids.confirm(42);
        }
    }
}
