//! [`ByteRange`]: the half-open byte range `[start, end)` that the extent trees' public APIs
//! and the cache pass around (the one range type outside the state tree's internals).
//!
//! Invariants: `start <= end`, checked by every constructor (an inverted range is a bug and
//! panics, in release builds too); `start == end` is the empty range, on which every tree
//! operation is a no-op. The fields are private, so no range breaks this.
//!
//! `end` is exclusive, so the last byte a range can name is `u64::MAX - 1`: byte `u64::MAX`
//! is not representable. That is fine: file offsets stop at `i64::MAX` (the kernel's limit
//! for FUSE files), so "from `off` to the end" is `[off, u64::MAX)` ([`ByteRange::from_offset`],
//! [`ByteRange::ALL`]), which covers every byte a file can have.

use crate::pool::PAGE_SIZE;
use std::fmt;

const P: u64 = PAGE_SIZE as u64;

/// Bytes `[start, end)`; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

impl ByteRange {
    /// Every representable byte, `[0, u64::MAX)`.
    pub const ALL: ByteRange = ByteRange {
        start: 0,
        end: u64::MAX,
    };

    /// `[start, end)`. Panics if `start > end`.
    #[inline]
    #[track_caller]
    pub fn new(start: u64, end: u64) -> ByteRange {
        assert!(start <= end, "byte range [{start}, {end}) has start > end");
        ByteRange { start, end }
    }

    /// `[off, off + len)`; the end saturates at `u64::MAX` (i.e. "to the end", which only a
    /// range past any file offset can reach).
    #[inline]
    pub const fn at(off: u64, len: u64) -> ByteRange {
        ByteRange {
            start: off,
            end: off.saturating_add(len),
        }
    }

    /// `[off, u64::MAX)`: from `off` to the end of every file.
    #[inline]
    pub const fn from_offset(off: u64) -> ByteRange {
        ByteRange {
            start: off,
            end: u64::MAX,
        }
    }

    /// First byte (if not empty).
    #[inline]
    pub const fn start(self) -> u64 {
        self.start
    }

    /// One past the last byte.
    #[inline]
    pub const fn end(self) -> u64 {
        self.end
    }

    /// Number of bytes (exact: at most `u64::MAX`).
    #[inline]
    pub const fn len(self) -> u64 {
        self.end - self.start
    }

    #[inline]
    pub const fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// Whether byte `off` is in the range.
    #[inline]
    pub const fn contains(self, off: u64) -> bool {
        self.start <= off && off < self.end
    }

    /// The bytes in both; empty when they share none (then it starts at the later start, so
    /// `[s, e).intersect([0, size))` is `[s, s)` for a range wholly past `size`).
    #[inline]
    pub fn intersect(self, other: ByteRange) -> ByteRange {
        let start = self.start.max(other.start);
        ByteRange {
            start,
            end: self.end.min(other.end).max(start),
        }
    }

    /// The whole pages holding the range: `[floor_page(start), ceil_page(end))`, the end
    /// saturating at the last page boundary below 2^64. An empty range stays empty only if
    /// page aligned.
    #[inline]
    pub fn page_aligned(self) -> ByteRange {
        let start = self.start & !(P - 1);
        let end = self
            .end
            .checked_add(P - 1)
            .map_or(!(P - 1), |x| x & !(P - 1));
        ByteRange::new(start, end.max(start))
    }

    /// The whole pages inside the range, `[ceil_page(start), floor_page(end))`, or None when
    /// no whole page lies inside.
    #[inline]
    pub fn inner_pages(self) -> Option<ByteRange> {
        let start = self.start.checked_add(P - 1)? & !(P - 1);
        let end = self.end & !(P - 1);
        (start < end).then_some(ByteRange { start, end })
    }
}

impl fmt::Display for ByteRange {
    /// `[start, end)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

impl fmt::Debug for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = u64::MAX;

    #[test]
    fn constructors() {
        let r = ByteRange::new(10, 20);
        assert_eq!((r.start(), r.end(), r.len()), (10, 20, 10));
        assert!(!r.is_empty());
        assert!(ByteRange::new(7, 7).is_empty());
        assert_eq!(ByteRange::new(7, 7).len(), 0);
        assert_eq!(ByteRange::at(10, 10), r);
        assert_eq!(ByteRange::at(MAX - 5, 10), ByteRange::new(MAX - 5, MAX));
        assert_eq!(ByteRange::from_offset(3), ByteRange::new(3, MAX));
        assert_eq!(ByteRange::ALL, ByteRange::from_offset(0));
        assert_eq!(ByteRange::ALL.len(), MAX);
        assert_eq!(ByteRange::default(), ByteRange::new(0, 0));
        assert_eq!(r.to_string(), "[10, 20)");
        assert_eq!(format!("{r:?}"), "[10, 20)");
    }

    #[test]
    #[should_panic(expected = "start > end")]
    fn inverted_panics() {
        let _ = ByteRange::new(5, 4);
    }

    #[test]
    fn contains_is_half_open() {
        let r = ByteRange::new(10, 20);
        assert!(!r.contains(9));
        assert!(r.contains(10));
        assert!(r.contains(19));
        assert!(!r.contains(20));
        assert!(!ByteRange::new(5, 5).contains(5));
        assert!(ByteRange::ALL.contains(MAX - 1));
        assert!(!ByteRange::ALL.contains(MAX));
    }

    #[test]
    fn intersect() {
        let r = ByteRange::new(10, 20);
        assert_eq!(r.intersect(ByteRange::new(15, 30)), ByteRange::new(15, 20));
        assert_eq!(r.intersect(ByteRange::new(0, 12)), ByteRange::new(10, 12));
        assert_eq!(r.intersect(ByteRange::ALL), r);
        // Disjoint: empty, at the later start.
        assert_eq!(r.intersect(ByteRange::new(0, 5)), ByteRange::new(10, 10));
        assert_eq!(r.intersect(ByteRange::new(25, 30)), ByteRange::new(25, 25));
        assert_eq!(r.intersect(ByteRange::new(20, 30)), ByteRange::new(20, 20));
    }

    #[test]
    fn pages() {
        let r = ByteRange::new(P + 1, 3 * P - 1);
        assert_eq!(r.page_aligned(), ByteRange::new(P, 3 * P));
        assert_eq!(r.inner_pages(), None);
        assert_eq!(
            ByteRange::new(P + 1, 4 * P - 1).inner_pages(),
            Some(ByteRange::new(2 * P, 3 * P))
        );
        let aligned = ByteRange::new(P, 3 * P);
        assert_eq!(aligned.page_aligned(), aligned);
        assert_eq!(aligned.inner_pages(), Some(aligned));
        assert_eq!(ByteRange::new(1, 2).inner_pages(), None);
        assert_eq!(ByteRange::new(1, 2).page_aligned(), ByteRange::new(0, P));
        assert_eq!(ByteRange::new(P, P).page_aligned(), ByteRange::new(P, P));
        // The top saturates at the last page boundary.
        assert_eq!(
            ByteRange::from_offset(P).page_aligned(),
            ByteRange::new(P, !(P - 1))
        );
        assert_eq!(
            ByteRange::new(MAX - 1, MAX).page_aligned(),
            ByteRange::new(!(P - 1), !(P - 1))
        );
        assert_eq!(ByteRange::new(MAX - 1, MAX).inner_pages(), None);
        assert_eq!(
            ByteRange::from_offset(1).inner_pages(),
            Some(ByteRange::new(P, !(P - 1)))
        );
    }
}
