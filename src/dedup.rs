//! The duplicate filter: which event ids an engine has seen recently.
//!
//! An engine remembers the 64-bit hashes of the last `input.dedup_capacity` event ids it
//! applied, in arrival order (a ring) and in a [`ProbeTable`]. At the default capacity a
//! busy partition's table is a megabyte, and the ids' hashes are spread over all of it,
//! so each probe is likely a cache miss, and there are two per event: one to claim the
//! new id, one to forget the oldest. On `pipewatch run`'s consuming thread those two misses were the
//! largest single cost of an event. Both are now fetched ahead of their probes:
//! - forgetting the oldest id fetches the slot of the one after it, needed at the next
//!   event;
//! - the engine fetches a new id's slot as soon as the decoder has read the id, the
//!   fourth field of a usual event ([`crate::decode::decode_hinting`]), so the rest of
//!   the decoding hides the wait.

use std::collections::VecDeque;

use crate::probe_table::ProbeTable;

/// Set in every stored key, so that no key is 0 (an empty slot).
const OCCUPIED: u64 = 1 << 63;

pub(crate) struct RecentIds {
    /// Confirmed keys, oldest first.
    order: VecDeque<u64>,
    /// Keys (hashes with [`OCCUPIED`] set), each its own place: those in `order` and the
    /// one claimed but not yet confirmed.
    table: ProbeTable,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> RecentIds {
        // Sized for a quiet partition and grown on demand: `pipewatch run` keeps an engine
        // per partition, and most see far fewer than `dedup_capacity` recent ids.
        let start = capacity.min(1 << 10);
        RecentIds {
            order: VecDeque::with_capacity(start),
            table: ProbeTable::new(start, 0),
            capacity,
        }
    }

    /// Claims id hash `h` for an event: false when it is among the recent ids (the event
    /// is a duplicate). The claim is then confirmed once the event is applied, or
    /// withdrawn if it is not.
    pub(crate) fn claim(&mut self, h: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = h | OCCUPIED;
        if self.table.find(key, |_| true).is_some() {
            return false;
        }
        self.table.insert(key);
        true
    }

    /// Starts fetching the slot where `h` would be claimed, ahead of the claim.
    pub(crate) fn prefetch(&self, h: u64) {
        if self.capacity > 0 {
            self.table.prefetch(h | OCCUPIED);
        }
    }

    pub(crate) fn withdraw(&mut self, h: u64) {
        if self.capacity > 0 {
            self.table.remove(h | OCCUPIED, |_| true);
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
                self.table.remove(oldest, |_| true);
            }
            if let Some(&next) = self.order.front() {
                self.table.prefetch(next);
            }
        }
    }
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
            assert_eq!(ids.table.len(), fifo.len());
            assert_eq!(ids.table.stored(), fifo.len());
            assert!(ids.table.slots() <= crate::probe_table::slots_for(capacity));
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
