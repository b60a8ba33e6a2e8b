//! A hash table of 64-bit entries whose probes can be fetched ahead.
//!
//! The duplicate filter and the data-flow tracker each keep a table too large for the
//! caches, probed for every event at a place that only the event tells: each probe is a
//! likely cache miss. hashbrown hides where an entry lives; this table does not, so its
//! users fetch a probe's cache line ahead of the probe ([`ProbeTable::prefetch`]) when
//! they know the place some work before they need it.
//!
//! An entry carries its own hash bits, from which its place is computed: open addressing
//! with linear probing, deletion by shifting back (no tombstones, so the table never
//! fills with them), grown past a load of 4/5. At that load an absent key's probe reads
//! about 10 slots, two cache lines, and the table is no larger than a `HashSet`'s.

/// The table's highest load: it grows before more than 4/5 of its slots are taken.
const MAX_LOAD: (usize, usize) = (4, 5);

pub(crate) struct ProbeTable {
    /// Entries, or 0 for an empty slot; a power of two long.
    slots: Box<[u64]>,
    len: usize,
    /// An entry's place is its bits from this one up ([`ProbeTable::place_of`]).
    place_shift: u32,
}

impl ProbeTable {
    /// A table for about `entries` entries (it grows as needed), whose entries keep their
    /// place in their bits from `place_shift` up. Entries must not be 0.
    pub(crate) fn new(entries: usize, place_shift: u32) -> ProbeTable {
        ProbeTable {
            slots: vec![0; slots_for(entries)].into_boxed_slice(),
            len: 0,
            place_shift,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated, for the heap this takes (8 bytes each).
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The place of `entry`: what a lookup of it passes as `place`.
    fn place_of(&self, entry: u64) -> u64 {
        entry >> self.place_shift
    }

    /// Starts bringing in the cache line where a probe of `place` begins, without
    /// waiting for it.
    #[inline(always)]
    pub(crate) fn prefetch(&self, place: u64) {
        prefetch(&self.slots[self.home(place)]);
    }

    /// The first entry at `place` that `is` accepts.
    pub(crate) fn find(&self, place: u64, mut is: impl FnMut(u64) -> bool) -> Option<u64> {
        self.at(place).find(|&entry| is(entry))
    }

    /// The entries at `place`, in the order of the probe.
    pub(crate) fn at(&self, place: u64) -> impl Iterator<Item = u64> + '_ {
        let mask = self.mask();
        let mut i = self.home(place);
        std::iter::from_fn(move || loop {
            let entry = self.slots[i];
            if entry == 0 {
                return None;
            }
            i = (i + 1) & mask;
            if self.place_of(entry) == place {
                return Some(entry);
            }
        })
    }

    /// Adds `entry`, which must not be 0 nor in the table already.
    pub(crate) fn insert(&mut self, entry: u64) {
        debug_assert_ne!(entry, 0);
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            self.grow();
        }
        self.put(entry);
        self.len += 1;
    }

    /// Removes the first entry at `place` that `is` accepts; false if there is none.
    /// The entries after it that may take its slot move back, so that every entry stays
    /// reachable from its home without crossing an empty slot.
    pub(crate) fn remove(&mut self, place: u64, mut is: impl FnMut(u64) -> bool) -> bool {
        let mask = self.mask();
        let mut hole = self.home(place);
        loop {
            match self.slots[hole] {
                0 => return false,
                entry if self.place_of(entry) == place && is(entry) => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut next = (hole + 1) & mask;
        loop {
            let entry = self.slots[next];
            if entry == 0 {
                break;
            }
            // The entry may fill the hole if its home is not after the hole (going round
            // from the hole to `next`): it is then at least as far from its home as from
            // the hole.
            let from_home = next.wrapping_sub(self.home(self.place_of(entry))) & mask;
            let from_hole = next.wrapping_sub(hole) & mask;
            if from_home >= from_hole {
                self.slots[hole] = entry;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
        true
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, place: u64) -> usize {
        place as usize & self.mask()
    }

    /// Puts `entry` in the first empty slot from its home.
    fn put(&mut self, entry: u64) {
        let mask = self.mask();
        let mut i = self.home(self.place_of(entry));
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
    }

    fn grow(&mut self) {
        let doubled = vec![0; self.slots.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.slots, doubled);
        for entry in old.iter().copied().filter(|&e| e != 0) {
            self.put(entry);
        }
    }

    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        self.slots.iter().filter(|&&e| e != 0).count()
    }
}

/// The table's length for `entries` entries: a power of two, kept under [`MAX_LOAD`]
/// with room for one more.
pub(crate) fn slots_for(entries: usize) -> usize {
    ((entries + 1) * MAX_LOAD.1)
        .div_ceil(MAX_LOAD.0)
        .next_power_of_two()
        .max(8)
}

/// Starts bringing in the cache line at `at`, without waiting for it. Any address will
/// do: a prefetch reads nothing and cannot fault.
#[inline(always)]
pub(crate) fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it dereferences nothing.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::{Rng, SeedableRng};

    use super::ProbeTable;

    /// Entries sharing a place (as runs of one correlation id in several pipelines do),
    /// homes crowded together and wrapping round the end: after every insertion and
    /// removal, each place holds exactly the entries a plain set says it does.
    #[test]
    fn entries_stay_findable_through_insertions_and_removals() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut table = ProbeTable::new(0, 32);
        let mut model: BTreeSet<u64> = BTreeSet::new();
        let places = 40u64;
        for round in 0..20_000u64 {
            // Places from a small range, and some near the top of the table's range of
            // homes, so that probes wrap round.
            let place = match rng.gen_range(0..3) {
                0 => rng.gen_range(0..places),
                1 => u64::from(u32::MAX) - rng.gen_range(0..places),
                _ => rng.gen_range(0..places) << 10,
            };
            let entry = place << 32 | (round % 5 + 1);
            if model.contains(&entry) || (model.len() > 300 && rng.gen_ratio(1, 2)) {
                let victim = *model.iter().nth(rng.gen_range(0..model.len())).unwrap();
                let tag = victim & 0xffff_ffff;
                assert!(table.remove(victim >> 32, |e| e & 0xffff_ffff == tag));
                model.remove(&victim);
            } else {
                table.insert(entry);
                model.insert(entry);
            }
            if round % 97 == 0 || model.len() < 10 {
                for &e in &model {
                    let found: BTreeSet<u64> = table.at(e >> 32).collect();
                    let expected: BTreeSet<u64> = model
                        .iter()
                        .copied()
                        .filter(|m| m >> 32 == e >> 32)
                        .collect();
                    assert_eq!(found, expected, "round {round}");
                }
            }
            assert_eq!((table.len(), table.stored()), (model.len(), model.len()));
        }
        // A place never used has nothing to remove.
        assert!(!table.remove(1 << 20, |_| true));
    }
}
