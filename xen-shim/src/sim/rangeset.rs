//! Xen's `rangeset` as the ioreq-server code uses it (xen/common/rangeset.c): inclusive
//! ranges, adjacent ones merged, at most [`MAX_NR_IO_RANGES`] of them per set.

use std::collections::BTreeMap;

/// `MAX_NR_IO_RANGES` (xen/include/xen/ioreq.h): the limit Xen sets on each server's sets.
pub const MAX_NR_IO_RANGES: usize = 256;

/// A set of inclusive `u64` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive), disjoint and not adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// `rangeset_overlaps_range`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ranges
            .range(..=end)
            .next_back()
            .is_some_and(|(_, &e)| e >= start)
    }

    /// `rangeset_contains_range`: one range covers all of `start..=end`.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.ranges
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    /// `rangeset_add_range` under the server's limit: merges with neighbours; `false` if the
    /// set would exceed [`MAX_NR_IO_RANGES`].
    pub fn add(&mut self, start: u64, end: u64) -> bool {
        let (mut s, mut e) = (start, end);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end.saturating_add(1))
            .filter(|(_, &re)| re.saturating_add(1) >= start)
            .map(|(&a, &b)| (a, b))
            .collect();
        if touching.is_empty() && self.ranges.len() >= MAX_NR_IO_RANGES {
            return false;
        }
        for (a, b) in touching {
            self.ranges.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.ranges.insert(s, e);
        true
    }

    /// `rangeset_remove_range`: may split a range in two.
    pub fn remove(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .filter(|(_, &e)| e >= start)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in hit {
            self.ranges.remove(&a);
            if a < start {
                self.ranges.insert(a, start - 1);
            }
            if b > end {
                self.ranges.insert(end + 1, b);
            }
        }
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&a, &b)| (a, b))
    }

    /// Number of (merged) ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_split_contain() {
        let mut r = RangeSet::default();
        assert!(r.add(0x10, 0x10) && r.add(0x12, 0x12) && r.add(0x11, 0x11));
        assert_eq!(r.iter().collect::<Vec<_>>(), [(0x10, 0x12)]);
        assert!(r.contains(0x11, 0x12) && !r.contains(0x11, 0x13));
        r.remove(0x11, 0x11);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(0x10, 0x10), (0x12, 0x12)]);
        assert!(r.overlaps(0, 0x10) && !r.overlaps(0x11, 0x11));
        r.remove(0, u64::MAX);
        assert!(r.is_empty());
    }

    #[test]
    fn limit() {
        let mut r = RangeSet::default();
        for i in 0..MAX_NR_IO_RANGES as u64 {
            assert!(r.add(i * 2, i * 2));
        }
        assert!(!r.add(10_000, 10_000));
        assert!(r.add(1, 1), "merging does not add a range");
        assert_eq!(r.len(), MAX_NR_IO_RANGES - 1);
    }
}
