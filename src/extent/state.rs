//! Extent state tree: per-file, byte-granular state bits kept as ranges.
//!
//! # What it owns
//!
//! One [`ExtentStateTree`] per file records, for every byte offset, a small
//! set of state [`Bits`] (`UPTODATE`, `DIRTY`, `LOCKED`, `WRITEBACK`, and
//! room for more). Instead of a per-page flag word, the states are stored as
//! sorted, non-overlapping ranges in a `BTreeMap<start, (end, bits)>`. A byte
//! not covered by any state has no bits at all (a "hole").
//!
//! # Ranges: half-open outside, inclusive inside
//!
//! Every public method takes and returns half-open [`ByteRange`]s `[start, end)`
//! (an [`ExtentState`] carries one too), like the extent map and the cache. An
//! empty range is a no-op: setting or clearing changes 0 bytes, `test_range` is
//! vacuously true, `test_any` false, walks visit nothing, locking it locks
//! nothing (`try_lock_range` succeeds) and `wait_clear` returns at once.
//! Internally the map keeps *inclusive* `[start, end]` pairs, converted once at
//! the boundary (`incl` / `half_open`). Since no `ByteRange` names byte
//! `u64::MAX`, no state ever holds it, so the conversion back cannot overflow.
//!
//! The tree also owns the *range lock*: [`ExtentStateTree::lock_range`] waits
//! on the tree's `Condvar` until no byte of the range is `LOCKED` (or carries
//! any extra bit the caller names, such as `WRITEBACK`), then takes the whole
//! range. `LOCKED` is not a state of the map: the held ranges are a short list
//! beside it (one per thread inside a critical section), so taking and
//! releasing a lock never splits or merges states. A one-page read or write
//! thus costs one map query to lock and at most one map change to unlock,
//! where a lock stored as a bit cost a split at both ends and a merge each way.
//! The map's bits never include `LOCKED`: `set_bits` refuses it (a bug) and
//! clearing it there is a no-op; `test_range`, `test_any` and `wait_clear`
//! also look at the held ranges when asked for `LOCKED`; the other queries see
//! the map alone; [`ExtentStateTree::locks`] lists the held ranges.
//!
//! # Invariants (checked by [`ExtentStateTree::check_invariants`])
//!
//! * states are sorted by `start`, `start <= end`, and never overlap;
//! * no state holds byte `u64::MAX` (no `ByteRange` can name it);
//! * no state has empty bits (clearing the last bit removes the state);
//! * two *adjacent* states (`a.end + 1 == b.start`) never carry equal bits;
//! * no state carries `LOCKED`; the held locks never overlap one another;
//! * the byte counters (`dirty`, `uptodate`, `writeback`) equal the sum over
//!   the states exactly, and `locked` the sum over the held locks. They are kept as `u128` internally (the
//!   internals were written for the full `2^64`-byte space); the public
//!   getters and returned "bytes changed" counts saturate at `u64::MAX`, which
//!   the reachable `2^64 - 1` bytes never exceed.
//!
//! # Mapping to btrfs's `extent_io_tree`
//!
//! | btrfs (`fs/btrfs/extent-io-tree.c`) | here |
//! | --- | --- |
//! | `struct extent_io_tree` (rb-tree + spinlock) | `Mutex<Inner>` holding a `BTreeMap` |
//! | `struct extent_state {start, end, state}` | map entry `start -> (end, Bits)` / [`ExtentState`] |
//! | `set_extent_bit` (split, fill holes, merge) | [`ExtentStateTree::set_bits`] |
//! | `clear_extent_bit` (free empty states, wake) | [`ExtentStateTree::clear_bits`] |
//! | `convert_extent_bit` | [`ExtentStateTree::set_clear_bits`] |
//! | `test_range_bit` (all / any) | [`ExtentStateTree::test_range`] / [`ExtentStateTree::test_any`] |
//! | `find_first_extent_bit` | [`ExtentStateTree::find_first`] |
//! | `find_contiguous_extent_bit` / `find_lock_delalloc_range`'s walk | [`ExtentStateTree::find_contiguous`] |
//! | `lock_extent` / `try_lock_extent` / `unlock_extent` | [`ExtentStateTree::lock_range`] / [`ExtentStateTree::try_lock_range`] / [`ExtentStateTree::unlock_range`] |
//! | `wait_extent_bit` + per-state wait queues | [`ExtentStateTree::wait_clear`] + one tree-wide `Condvar` |
//! | `merge_state` (never merges `EXTENT_LOCKED`/boundary) | locks are not states: nothing to exclude |
//!
//! Differences from btrfs: one tree-wide `Condvar` instead of a wait queue per
//! state (waiters recheck their range after any clear or unlock); the lock is
//! taken atomically (see below) instead of piecewise, and kept in a list beside
//! the states instead of as a state bit; memory is never preallocated because
//! there is no atomic context to worry about.
//!
//! # Lock strategy: whole range, atomically, once free
//!
//! `lock_range*` takes the mutex, checks whether any held lock overlaps the
//! range (or any byte of it has an extra waited-for bit); if none does, it adds
//! the whole range to the held locks in the same critical section and returns. Otherwise it
//! waits on the `Condvar` (which releases the mutex) and rechecks after every
//! wake-up. A thread therefore never holds part of a range while waiting for
//! the rest, so there is no hold-and-wait and no deadlock for any number of
//! threads locking any overlapping ranges (a thread that already holds a lock
//! and locks an overlapping range deadlocks on itself, as in btrfs). The price
//! is fairness: a large range can be overtaken repeatedly by small ones.
//!
//! # Complexity and concurrency
//!
//! Every operation holds the mutex for its own duration only, never across a
//! wait. Mutations are `O(k · log n)` for `k` states touched: std's
//! `BTreeMap` has no stable cursor API, so each split/insert/remove is its own
//! `O(log n)` lookup (two splits, one step per touched state, one merge step
//! per touched state). Queries are `O(log n + k)`. Nothing allocates except
//! the `BTreeMap`'s own nodes (and [`ExtentStateTree::states`], which returns a
//! `Vec`). Callbacks of `for_each*` run *outside* the mutex, fed in batches
//! from a fixed-size stack buffer, so they may call back into the tree; the
//! price is that a walk longer than one batch is not a single atomic snapshot.

use super::range::ByteRange;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Not};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// A set of extent state bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Bits(pub u32);

impl Bits {
    /// No bits.
    pub const NONE: Bits = Bits(0);
    /// The page cache holds the current contents of these bytes.
    pub const UPTODATE: Bits = Bits(1 << 0);
    /// The bytes were modified and must be written back.
    pub const DIRTY: Bits = Bits(1 << 1);
    /// The range is locked by someone (see [`ExtentStateTree::lock_range`]).
    pub const LOCKED: Bits = Bits(1 << 2);
    /// The bytes are being written back.
    pub const WRITEBACK: Bits = Bits(1 << 3);
    /// Written back to the backing file but not yet made durable there (fsync pending): like
    /// NFS's unstable writes, they become DIRTY again if the fsync fails.
    pub const UNSTABLE: Bits = Bits(1 << 4);
    /// Pages (page-aligned) holding a reservation of SOURCE space for dirty data that will
    /// need new blocks there (see `cache::space`).
    pub const RESERVED: Bits = Bits(1 << 5);
    /// Every bit, including those not named yet.
    pub const ALL: Bits = Bits(!0);

    /// True if every bit of `other` is in `self` (always true for `NONE`).
    pub const fn contains(self, other: Bits) -> bool {
        self.0 & other.0 == other.0
    }
    /// True if `self` and `other` share a bit.
    pub const fn intersects(self, other: Bits) -> bool {
        self.0 & other.0 != 0
    }
    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Bits {
    type Output = Bits;
    fn bitor(self, rhs: Bits) -> Bits {
        Bits(self.0 | rhs.0)
    }
}
impl BitOrAssign for Bits {
    fn bitor_assign(&mut self, rhs: Bits) {
        self.0 |= rhs.0;
    }
}
impl BitAnd for Bits {
    type Output = Bits;
    fn bitand(self, rhs: Bits) -> Bits {
        Bits(self.0 & rhs.0)
    }
}
impl BitAndAssign for Bits {
    fn bitand_assign(&mut self, rhs: Bits) {
        self.0 &= rhs.0;
    }
}
impl Not for Bits {
    type Output = Bits;
    fn not(self) -> Bits {
        Bits(!self.0)
    }
}

const BIT_NAMES: [(Bits, &str); 6] = [
    (Bits::UPTODATE, "UPTODATE"),
    (Bits::DIRTY, "DIRTY"),
    (Bits::LOCKED, "LOCKED"),
    (Bits::WRITEBACK, "WRITEBACK"),
    (Bits::UNSTABLE, "UNSTABLE"),
    (Bits::RESERVED, "RESERVED"),
];

impl fmt::Display for Bits {
    /// `UPTODATE|DIRTY`, `-` for no bits; unnamed bits print as one hex word.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut rest = self.0;
        let mut sep = "";
        for (bit, name) in BIT_NAMES {
            if self.contains(bit) {
                write!(f, "{sep}{name}")?;
                sep = "|";
                rest &= !bit.0;
            }
        }
        if rest != 0 {
            write!(f, "{sep}{rest:#x}")?;
        }
        Ok(())
    }
}

/// One range of bytes sharing the same bits (never empty when it comes from
/// the tree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentState {
    pub range: ByteRange,
    pub bits: Bits,
}

impl ExtentState {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.range.len()
    }

    /// Never true for a state of the tree (kept for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The last byte (inclusive end), for output that prints inclusive ranges
    /// (`extentfs extents`). A state of the tree is never empty.
    pub fn last(&self) -> u64 {
        self.range.end() - 1
    }
}

impl fmt::Display for ExtentState {
    /// `[start, end) BITS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.range, self.bits)
    }
}

/// Exact byte count of `[s, e]`.
#[inline]
fn len128(s: u64, e: u64) -> u128 {
    (e - s) as u128 + 1
}

#[inline]
fn sat(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The API boundary, inward: a half-open range as the inclusive `(start, end)`
/// pair the internals use, or None when it is empty (a no-op everywhere).
#[inline]
fn incl(r: ByteRange) -> Option<(u64, u64)> {
    (!r.is_empty()).then(|| (r.start(), r.end() - 1))
}

/// The API boundary, outward: the inclusive `[s, e]` as a half-open range. No
/// state holds byte `u64::MAX` (see the module docs), so `e + 1` cannot overflow.
#[inline]
fn half_open(s: u64, e: u64) -> ByteRange {
    ByteRange::new(s, e + 1)
}

type Map = BTreeMap<u64, (u64, Bits)>;

/// States overlapping `[start, end]`, unclipped, in order.
fn overlapping(map: &Map, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, Bits)> + '_ {
    let first = map
        .range(..start)
        .next_back()
        .filter(|(_, (e, _))| *e >= start);
    first
        .into_iter()
        .chain(map.range(start..=end))
        .map(|(&s, &(e, b))| (s, e, b))
}

fn any_in(map: &Map, start: u64, end: u64, bits: Bits) -> bool {
    !bits.is_empty() && overlapping(map, start, end).any(|(_, _, b)| b.intersects(bits))
}

fn all_in(map: &Map, start: u64, end: u64, bits: Bits) -> bool {
    if bits.is_empty() {
        return true;
    }
    let mut pos = start;
    for (s, e, b) in overlapping(map, start, end) {
        if s > pos || !b.contains(bits) {
            return false;
        }
        if e >= end {
            return true;
        }
        pos = e + 1;
    }
    false
}

/// Mutex-protected part of the tree.
#[derive(Default)]
struct Inner {
    map: Map,
    /// The held range locks, inclusive `(start, end)`, in no order, never overlapping: one
    /// per thread inside a critical section, so a linear scan beats any index.
    locks: Vec<(u64, u64)>,
    uptodate: u128,
    dirty: u128,
    locked: u128,
    writeback: u128,
    /// Threads currently blocked on the condvar (skip `notify_all` if zero).
    waiters: usize,
    /// A total of DIRTY bytes shared by many trees (a mount's), kept by `account` so that no
    /// path that sets or clears DIRTY can forget it.
    dirty_total: Option<Arc<AtomicU64>>,
}

impl Inner {
    fn account(&mut self, old: Bits, new: Bits, len: u128) {
        if let Some(total) = &self.dirty_total {
            // Saturating like the byte counts (a range can span 2^64 bytes; DIRTY ones never
            // do in a mount: they stop at the file size limit).
            let n = len.min(u64::MAX as u128) as u64;
            match (old.contains(Bits::DIRTY), new.contains(Bits::DIRTY)) {
                (true, false) => {
                    total.fetch_sub(n, Ordering::Relaxed);
                }
                (false, true) => {
                    total.fetch_add(n, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        for (bit, ctr) in [
            (Bits::UPTODATE, &mut self.uptodate),
            (Bits::DIRTY, &mut self.dirty),
            (Bits::WRITEBACK, &mut self.writeback),
        ] {
            match (old.contains(bit), new.contains(bit)) {
                (true, false) => *ctr -= len,
                (false, true) => *ctr += len,
                _ => {}
            }
        }
    }

    /// Make sure no state straddles `at - 1 | at`.
    fn split_before(&mut self, at: u64) {
        if at == 0 {
            return;
        }
        let Some((_, v)) = self.map.range_mut(..at).next_back() else {
            return;
        };
        if v.0 < at {
            return;
        }
        let (old_end, b) = *v;
        v.0 = at - 1;
        self.map.insert(at, (old_end, b));
    }

    /// Apply `new = (old & !clear) | set` to every byte of `[start, end]`
    /// (holes count as `old = NONE`). Returns (bytes changed, whether any bit
    /// was removed from any byte).
    fn modify(&mut self, start: u64, end: u64, set: Bits, clear: Bits) -> (u128, bool) {
        debug_assert!(
            !set.intersects(Bits::LOCKED),
            "LOCKED is taken with lock_range, not set as a bit"
        );
        let set = set & !Bits::LOCKED;
        let clear = Bits(clear.0 & !set.0 & !Bits::LOCKED.0);
        if set.is_empty() && clear.is_empty() {
            return (0, false);
        }
        // Fast path: one state covers the whole range and would not change.
        if let Some((_, &(e, b))) = self.map.range(..=start).next_back() {
            if e >= end && Bits((b.0 & !clear.0) | set.0) == b {
                return (0, false);
            }
        }
        self.split_before(start);
        if end < u64::MAX {
            self.split_before(end + 1);
        }
        let mut changed = 0u128;
        let mut cleared = false;
        let mut pos = start;
        loop {
            let next = self.map.range_mut(pos..=end).next();
            let Some((&s, v)) = next else {
                if !set.is_empty() {
                    self.map.insert(pos, (end, set));
                    let len = len128(pos, end);
                    self.account(Bits::NONE, set, len);
                    changed += len;
                }
                break;
            };
            let (e, b) = *v;
            let nb = Bits((b.0 & !clear.0) | set.0);
            if nb != b && !nb.is_empty() {
                v.1 = nb; // in place: no second lookup
            }
            if s > pos && !set.is_empty() {
                self.map.insert(pos, (s - 1, set));
                let len = len128(pos, s - 1);
                self.account(Bits::NONE, set, len);
                changed += len;
            }
            if nb != b {
                let len = len128(s, e);
                self.account(b, nb, len);
                changed += len;
                cleared |= b.intersects(clear);
                if nb.is_empty() {
                    self.map.remove(&s);
                }
            }
            // The split at end + 1 guarantees e <= end.
            if e >= end {
                break;
            }
            pos = e + 1;
        }
        self.merge_around(start, end);
        (changed, cleared)
    }

    /// Merge equal, adjacent states among those touching `[start - 1, end + 1]`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let first = self
            .map
            .range(..start)
            .next_back()
            .or_else(|| self.map.range(start..).next())
            .map(|(&k, _)| k);
        let Some(mut cur) = first else { return };
        // One descent per step: look at `cur` and its successor together.
        loop {
            let mut it = self.map.range(cur..);
            let Some((_, &(ce, cb))) = it.next() else {
                return;
            };
            match it.next().map(|(&k, &v)| (k, v)) {
                Some((nk, (ne, nb))) if ce.checked_add(1) == Some(nk) && nb == cb => {
                    self.map.remove(&nk);
                    if let Some(v) = self.map.get_mut(&cur) {
                        v.0 = ne;
                    }
                }
                // States starting after `end` have untouched successors.
                Some((nk, _)) if nk <= end => cur = nk,
                _ => return,
            }
        }
    }
}

impl Inner {
    /// Whether a held lock overlaps `[start, end]`.
    fn lock_overlaps(&self, start: u64, end: u64) -> bool {
        self.locks.iter().any(|&(s, e)| s <= end && start <= e)
    }

    /// Whether held locks cover every byte of `[start, end]`.
    fn locks_cover(&self, start: u64, end: u64) -> bool {
        let mut pos = start;
        loop {
            let Some(&(_, e)) = self.locks.iter().find(|&&(s, e)| s <= pos && pos <= e) else {
                return false;
            };
            if e >= end {
                return true;
            }
            pos = e + 1;
        }
    }

    /// Whether every byte of `[start, end]` has all of `bits`, `LOCKED` meaning
    /// under a held lock.
    fn all(&self, start: u64, end: u64, bits: Bits) -> bool {
        (!bits.intersects(Bits::LOCKED) || self.locks_cover(start, end))
            && all_in(&self.map, start, end, bits & !Bits::LOCKED)
    }

    /// Whether `[start, end]` has any of `bits`, `LOCKED` meaning a held lock.
    fn any(&self, start: u64, end: u64, bits: Bits) -> bool {
        let mut in_map = bits & !Bits::LOCKED;
        // Bits the tree counts and has none of need no walk (a writer waiting for WRITEBACK
        // while nothing of the file is being written back: the common case).
        for (bit, n) in [
            (Bits::UPTODATE, self.uptodate),
            (Bits::DIRTY, self.dirty),
            (Bits::WRITEBACK, self.writeback),
        ] {
            if n == 0 {
                in_map &= !bit;
            }
        }
        (bits.intersects(Bits::LOCKED) && self.lock_overlaps(start, end))
            || any_in(&self.map, start, end, in_map)
    }

    fn take_lock(&mut self, start: u64, end: u64) {
        self.locks.push((start, end));
        self.locked += len128(start, end);
    }

    /// Release the held lock `[start, end]`; false if no lock is exactly that range.
    fn release_lock(&mut self, start: u64, end: u64) -> bool {
        match self.locks.iter().position(|&l| l == (start, end)) {
            Some(i) => {
                self.locks.swap_remove(i);
                self.locked -= len128(start, end);
                true
            }
            None => false,
        }
    }
}

/// Number of items handed to a `for_each*` callback per mutex acquisition.
const BATCH: usize = 32;

/// Estimated heap bytes per map entry, see [`ExtentStateTree::metadata_bytes`].
pub const METADATA_BYTES_PER_ENTRY: usize = 48;

/// Per-file extent state tree. See the module docs.
pub struct ExtentStateTree {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Default for ExtentStateTree {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ExtentStateTree {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(total) = &inner.dirty_total {
            total.fetch_sub(inner.dirty.min(u64::MAX as u128) as u64, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for ExtentStateTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_list()
            .entries(g.map.iter().map(|(&s, &(e, b))| ExtentState {
                range: half_open(s, e),
                bits: b,
            }))
            .finish()
    }
}

impl ExtentStateTree {
    pub fn new() -> Self {
        ExtentStateTree {
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
        }
    }

    /// A tree whose DIRTY bytes also count in `total` (shared by the trees of a mount), from
    /// inside every set, clear, split and merge; what is still DIRTY when the tree is dropped
    /// is taken off `total` then.
    pub fn with_dirty_total(total: Arc<AtomicU64>) -> Self {
        let t = Self::new();
        t.lock().dirty_total = Some(total);
        t
    }

    /// Critical sections never panic except on an internal bug, so a
    /// poisoned mutex is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, mut g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        g.waiters += 1;
        let mut g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        g.waiters -= 1;
        g
    }

    /// Set `bits` on `r`, splitting states at both ends, filling holes with
    /// new states and merging with equal neighbours. Returns the number of
    /// bytes whose bits changed. `LOCKED` is not a bit of the map: lock with
    /// [`Self::lock_range`] (asking for it here is a bug, ignored in release builds).
    pub fn set_bits(&self, r: ByteRange, bits: Bits) -> u64 {
        self.set_clear_bits(r, bits, Bits::NONE)
    }

    /// Clear `bits` on `r`; a state whose bits reach zero disappears;
    /// neighbours left equal are merged. Clearing any bit wakes waiters.
    /// Returns bytes changed.
    pub fn clear_bits(&self, r: ByteRange, bits: Bits) -> u64 {
        self.set_clear_bits(r, Bits::NONE, bits)
    }

    /// Set `set` and clear `clear` over `r` in one atomic step: each byte
    /// becomes `(old & !clear) | set` (a bit in both is set). Returns bytes
    /// changed (0 for an empty range).
    pub fn set_clear_bits(&self, r: ByteRange, set: Bits, clear: Bits) -> u64 {
        let Some((start, end)) = incl(r) else {
            return 0;
        };
        let mut g = self.lock();
        let (changed, cleared) = g.modify(start, end, set, clear);
        let wake = cleared && g.waiters > 0;
        drop(g);
        if wake {
            self.cv.notify_all();
        }
        sat(changed)
    }

    /// True if every byte of `r` has all of `bits` (a hole fails; an empty
    /// range or `bits == NONE` is vacuously true); `LOCKED` asks whether held
    /// locks cover `r`.
    pub fn test_range(&self, r: ByteRange, bits: Bits) -> bool {
        match incl(r) {
            None => true,
            Some((start, end)) => self.lock().all(start, end, bits),
        }
    }

    /// True if any byte of `r` has any of `bits` (never for an empty range);
    /// `LOCKED` asks whether a held lock overlaps `r`.
    pub fn test_any(&self, r: ByteRange, bits: Bits) -> bool {
        match incl(r) {
            None => false,
            Some((start, end)) => self.lock().any(start, end, bits),
        }
    }

    /// First state ending at or after `from` that has any of `bits`, clipped
    /// so that `start >= from`.
    pub fn find_first(&self, from: u64, bits: Bits) -> Option<ExtentState> {
        if bits.is_empty() {
            return None;
        }
        let g = self.lock();
        let found = overlapping(&g.map, from, u64::MAX).find(|(_, _, b)| b.intersects(bits));
        found.map(|(s, e, b)| ExtentState {
            range: half_open(s.max(from), e),
            bits: b,
        })
    }

    /// Like [`Self::find_first`], then extend over following adjacent states
    /// (no hole between) that also have any of `bits`. Returns the run (never
    /// empty); `max_len` caps its length in bytes (0 = no cap).
    pub fn find_contiguous(&self, from: u64, bits: Bits, max_len: u64) -> Option<ByteRange> {
        if bits.is_empty() {
            return None;
        }
        let g = self.lock();
        let mut it = overlapping(&g.map, from, u64::MAX);
        let (s, e, _) = it.by_ref().find(|(_, _, b)| b.intersects(bits))?;
        let rs = s.max(from);
        let cap_end = match max_len {
            0 => u64::MAX,
            n => rs.saturating_add(n - 1),
        };
        let mut re = e;
        if re >= cap_end {
            return Some(half_open(rs, cap_end));
        }
        for (s, e, b) in it {
            // re < cap_end <= u64::MAX here, so re + 1 cannot overflow.
            if s != re + 1 || !b.intersects(bits) {
                break;
            }
            re = e;
            if re >= cap_end {
                re = cap_end;
                break;
            }
        }
        Some(half_open(rs, re))
    }

    /// Call `f` with each maximal sub-range of `r` whose bytes do not all
    /// have every bit of `bits` (holes included), in order. `f` runs outside
    /// the mutex (batches of 32 runs per lock hold).
    pub fn for_each_missing(&self, r: ByteRange, bits: Bits, mut f: impl FnMut(ByteRange)) {
        let Some((start, end)) = incl(r) else {
            return;
        };
        if bits.is_empty() {
            return;
        }
        let mut pos = start;
        loop {
            let mut acc = MissingAcc::default();
            {
                let g = self.lock();
                let mut cursor = pos;
                let mut done = false;
                for (s, e, b) in overlapping(&g.map, pos, end) {
                    let cs = s.max(cursor);
                    let ce = e.min(end);
                    if cs > cursor {
                        acc.add(cursor, cs - 1);
                    }
                    if !b.contains(bits) {
                        acc.add(cs, ce);
                    }
                    if ce >= end {
                        done = true;
                        break;
                    }
                    cursor = ce + 1;
                    if acc.resume.is_some() {
                        break;
                    }
                }
                if !done && acc.resume.is_none() {
                    acc.add(cursor, end);
                }
                acc.finish();
            }
            for &(a, b) in &acc.buf[..acc.n] {
                f(half_open(a, b));
            }
            match acc.resume {
                Some(p) => pos = p,
                None => return,
            }
        }
    }

    /// The ranges within `r` whose states carry all of `bits`, in order
    /// (neighbouring states are separate ranges). Allocates: not for hot paths.
    pub fn ranges_with(&self, r: ByteRange, bits: Bits) -> Vec<ByteRange> {
        let mut v = Vec::new();
        self.for_each(r, |st| {
            if st.bits.contains(bits) {
                v.push(st.range);
            }
        });
        v
    }

    /// Visit the states overlapping `r`, clipped to it, in order.
    /// `f` runs outside the mutex (batches of 32 states per lock hold).
    pub fn for_each(&self, r: ByteRange, mut f: impl FnMut(ExtentState)) {
        let Some((start, end)) = incl(r) else {
            return;
        };
        let empty = ExtentState {
            range: ByteRange::default(),
            bits: Bits::NONE,
        };
        let mut pos = start;
        loop {
            let mut buf = [empty; BATCH];
            let mut n = 0;
            let mut resume = None;
            {
                let g = self.lock();
                for (s, e, b) in overlapping(&g.map, pos, end) {
                    if n == BATCH {
                        resume = Some(s);
                        break;
                    }
                    buf[n] = ExtentState {
                        range: half_open(s.max(pos), e.min(end)),
                        bits: b,
                    };
                    n += 1;
                }
            }
            for st in &buf[..n] {
                f(*st);
            }
            match resume {
                Some(p) => pos = p,
                None => return,
            }
        }
    }

    /// The held range locks, in order (allocates; for tests and stats).
    pub fn locks(&self) -> Vec<ByteRange> {
        let mut v: Vec<ByteRange> = self
            .lock()
            .locks
            .iter()
            .map(|&(s, e)| half_open(s, e))
            .collect();
        v.sort_by_key(|r| r.start());
        v
    }

    /// Every state, in order (allocates; for tests and stats). Held locks are
    /// not states (see [`Self::locks`]).
    pub fn states(&self) -> Vec<ExtentState> {
        let g = self.lock();
        g.map
            .iter()
            .map(|(&s, &(e, b))| ExtentState {
                range: half_open(s, e),
                bits: b,
            })
            .collect()
    }

    /// Exclusive range lock: waits until no held lock overlaps `r`, then takes
    /// the whole range atomically (see the module docs for why this is
    /// deadlock-free). An empty range locks nothing, at once.
    pub fn lock_range(&self, r: ByteRange) {
        self.lock_range_waiting(r, Bits::NONE);
    }

    /// Like [`Self::lock_range`], but also waits until no byte of the range
    /// has any of `also_wait_for` (e.g. `WRITEBACK`).
    pub fn lock_range_waiting(&self, r: ByteRange, also_wait_for: Bits) {
        let Some((start, end)) = incl(r) else {
            return;
        };
        let conflict = Bits::LOCKED | also_wait_for;
        let mut g = self.lock();
        loop {
            if !g.any(start, end, conflict) {
                g.take_lock(start, end);
                return;
            }
            tracing::trace!(range = %r, bits = %conflict, "lock_range: waiting");
            g = self.wait(g);
        }
    }

    /// Lock `r` if no byte of it is `LOCKED`; never waits. True for an empty
    /// range (which locks nothing).
    pub fn try_lock_range(&self, r: ByteRange) -> bool {
        let Some((start, end)) = incl(r) else {
            return true;
        };
        let mut g = self.lock();
        if g.lock_overlaps(start, end) {
            return false;
        }
        g.take_lock(start, end);
        true
    }

    /// Release the lock on `r` and wake waiters. The caller must hold exactly
    /// that lock (a bug otherwise: a panic in debug builds).
    pub fn unlock_range(&self, r: ByteRange) {
        self.unlock_range_with(r, Bits::NONE, Bits::NONE);
    }

    /// Unlock and, in the same atomic step, set `set` and clear `clear` (the
    /// lock is always released, whatever `set` names). Returns the change in
    /// `DIRTY` bytes (for the caller's accounting; saturating; 0 for an empty
    /// range).
    pub fn unlock_range_with(&self, r: ByteRange, set: Bits, clear: Bits) -> i64 {
        let Some((start, end)) = incl(r) else {
            return 0;
        };
        let mut g = self.lock();
        let held = g.release_lock(start, end);
        debug_assert!(
            held,
            "unlock_range({r}) on a range that is not locked as one"
        );
        let dirty_before = g.dirty;
        g.modify(start, end, set & !Bits::LOCKED, clear);
        let delta = if g.dirty >= dirty_before {
            sat(g.dirty - dirty_before) as i64
        } else {
            -(sat(dirty_before - g.dirty) as i64)
        };
        let wake = g.waiters > 0;
        drop(g);
        if wake {
            self.cv.notify_all();
        }
        delta
    }

    /// Block until no byte of `r` has any of `bits` (`LOCKED`: no held lock
    /// overlaps it; at once for an empty range).
    pub fn wait_clear(&self, r: ByteRange, bits: Bits) {
        let Some((start, end)) = incl(r) else {
            return;
        };
        let mut g = self.lock();
        while g.any(start, end, bits) {
            tracing::trace!(range = %r, bits = %bits, "wait_clear: waiting");
            g = self.wait(g);
        }
    }

    /// Bytes with `DIRTY` (saturating, see module docs).
    pub fn dirty_bytes(&self) -> u64 {
        sat(self.lock().dirty)
    }
    /// Bytes with `UPTODATE` (saturating).
    pub fn uptodate_bytes(&self) -> u64 {
        sat(self.lock().uptodate)
    }
    /// Bytes with `WRITEBACK` (saturating).
    pub fn writeback_bytes(&self) -> u64 {
        sat(self.lock().writeback)
    }
    /// Bytes under a held lock (saturating).
    pub fn locked_bytes(&self) -> u64 {
        sat(self.lock().locked)
    }

    /// Number of states.
    pub fn entries(&self) -> usize {
        self.lock().map.len()
    }

    /// Estimated heap bytes used by the tree:
    /// `size_of::<ExtentStateTree>() + entries * METADATA_BYTES_PER_ENTRY`
    /// (48). Derivation: a std `BTreeMap<u64, (u64, Bits)>` leaf holds up to
    /// 11 entries of 8 + 16 bytes plus parent pointer/index/len, 280 bytes;
    /// leaves are ~2/3 full on average (~7.3 entries), ≈ 38 bytes/entry;
    /// internal nodes (376 bytes, one per ~8 leaves) add ≈ 7; round up to 48.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.entries() * METADATA_BYTES_PER_ENTRY
    }

    /// Panic with a description if any invariant of the module docs is
    /// broken (sortedness, non-overlap, no empty state, merge rule, exact
    /// counters). `O(n)`; for tests and debugging.
    pub fn check_invariants(&self) {
        let g = self.lock();
        let mut prev: Option<(u64, u64, Bits)> = None;
        let (mut up, mut di, mut lo, mut wb) = (0u128, 0u128, 0u128, 0u128);
        for (&s, &(e, b)) in &g.map {
            assert!(s <= e, "state [{s}, {e}] has start > end");
            assert!(e < u64::MAX, "state [{s}, {e}] holds byte u64::MAX");
            assert!(!b.is_empty(), "state [{s}, {e}] has no bits");
            assert!(
                !b.intersects(Bits::LOCKED),
                "state [{s}, {e}] carries LOCKED"
            );
            if let Some((ps, pe, pb)) = prev {
                assert!(pe < s, "[{ps}, {pe}] overlaps [{s}, {e}]");
                if pe + 1 == s {
                    assert!(
                        pb != b,
                        "adjacent [{ps}, {pe}] and [{s}, {e}] both {b} not merged"
                    );
                }
            }
            let len = len128(s, e);
            for (bit, ctr) in [
                (Bits::UPTODATE, &mut up),
                (Bits::DIRTY, &mut di),
                (Bits::WRITEBACK, &mut wb),
            ] {
                if b.contains(bit) {
                    *ctr += len;
                }
            }
            prev = Some((s, e, b));
        }
        assert_eq!(up, g.uptodate, "uptodate counter");
        assert_eq!(di, g.dirty, "dirty counter");
        assert_eq!(wb, g.writeback, "writeback counter");
        for (i, &(s, e)) in g.locks.iter().enumerate() {
            assert!(s <= e && e < u64::MAX, "lock [{s}, {e}]");
            lo += len128(s, e);
            for &(s2, e2) in &g.locks[i + 1..] {
                assert!(
                    e < s2 || e2 < s,
                    "locks [{s}, {e}] and [{s2}, {e2}] overlap"
                );
            }
        }
        assert_eq!(lo, g.locked, "locked counter");
    }
}

/// Accumulates merged missing runs for `for_each_missing` into a fixed
/// buffer; when full, remembers where the next walk must resume.
struct MissingAcc {
    buf: [(u64, u64); BATCH],
    n: usize,
    run: Option<(u64, u64)>,
    resume: Option<u64>,
}

impl Default for MissingAcc {
    fn default() -> Self {
        MissingAcc {
            buf: [(0, 0); BATCH],
            n: 0,
            run: None,
            resume: None,
        }
    }
}

impl MissingAcc {
    fn add(&mut self, a: u64, b: u64) {
        match self.run {
            Some((rs, re)) if re.checked_add(1) == Some(a) => self.run = Some((rs, b)),
            _ => {
                self.flush();
                if self.resume.is_none() {
                    self.run = Some((a, b));
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Some((rs, re)) = self.run.take() {
            if self.n == BATCH {
                self.resume = Some(rs);
            } else {
                self.buf[self.n] = (rs, re);
                self.n += 1;
            }
        }
    }

    fn finish(&mut self) {
        if self.resume.is_none() {
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_shared_dirty_total_follows_every_change() {
        let total = Arc::new(AtomicU64::new(0));
        let a = ExtentStateTree::with_dirty_total(total.clone());
        let b = ExtentStateTree::with_dirty_total(total.clone());
        a.set_bits(r(0, 100), Bits::DIRTY | Bits::UPTODATE);
        b.set_bits(r(10, 20), Bits::DIRTY);
        assert_eq!(total.load(Ordering::Relaxed), 110);
        // Overlapping set: only the new bytes count; a split clear removes its part.
        a.set_bits(r(50, 150), Bits::DIRTY);
        assert_eq!(total.load(Ordering::Relaxed), 160);
        a.clear_bits(r(40, 60), Bits::DIRTY);
        assert_eq!(total.load(Ordering::Relaxed), 140);
        // DIRTY turned into WRITEBACK under a lock, in the unlocking step.
        a.lock_range_waiting(r(0, 10), Bits::NONE);
        a.unlock_range_with(r(0, 10), Bits::WRITEBACK, Bits::DIRTY);
        assert_eq!(total.load(Ordering::Relaxed), 130);
        assert_eq!(a.dirty_bytes() + b.dirty_bytes(), 130);
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), 10);
        drop(b);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    const U: Bits = Bits::UPTODATE;
    const D: Bits = Bits::DIRTY;
    const L: Bits = Bits::LOCKED;
    const W: Bits = Bits::WRITEBACK;
    const MAX: u64 = u64::MAX;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end)
    }

    /// The states as half-open `(start, end, bits)`, after checking the invariants.
    fn st(t: &ExtentStateTree) -> Vec<(u64, u64, Bits)> {
        t.check_invariants();
        t.states()
            .iter()
            .map(|s| (s.range.start(), s.range.end(), s.bits))
            .collect()
    }

    #[test]
    fn bits_ops_and_display() {
        assert_eq!((U | D).0, 3);
        assert!((U | D).contains(U));
        assert!(!(U).contains(U | D));
        assert!((U | D).intersects(D | W));
        assert!(!U.intersects(D));
        assert!(Bits::NONE.is_empty());
        assert!(U.contains(Bits::NONE));
        assert_eq!((U | D) & !U, D);
        let mut b = U;
        b |= W;
        assert_eq!(b, U | W);
        b &= W;
        assert_eq!(b, W);
        assert_eq!(Bits::NONE.to_string(), "-");
        assert_eq!((U | D).to_string(), "UPTODATE|DIRTY");
        assert_eq!((L | W).to_string(), "LOCKED|WRITEBACK");
        assert_eq!((D | Bits(0x100)).to_string(), "DIRTY|0x100");
        assert_eq!(Bits(0x30).to_string(), "UNSTABLE|RESERVED");
        assert_eq!(Bits(0x50).to_string(), "UNSTABLE|0x40");
        assert_eq!(Bits(0xc0).to_string(), "0xc0");
    }

    #[test]
    fn state_len_and_last() {
        let s = |a, b| ExtentState {
            range: r(a, b),
            bits: U,
        };
        assert_eq!(s(5, 6).len(), 1);
        assert_eq!((s(5, 6).last(), s(0, 10).last()), (5, 9));
        assert_eq!(s(0, 10).len(), 10);
        assert_eq!(s(1, MAX).len(), MAX - 1);
        assert_eq!(s(0, MAX).len(), MAX);
        assert_eq!(s(0, 10).to_string(), "[0, 10) UPTODATE");
    }

    #[test]
    fn set_on_empty_and_noop() {
        let t = ExtentStateTree::new();
        assert_eq!(t.set_bits(r(10, 20), U), 10);
        assert_eq!(st(&t), vec![(10, 20, U)]);
        // Already set: no change, no split.
        assert_eq!(t.set_bits(r(12, 16), U), 0);
        assert_eq!(st(&t), vec![(10, 20, U)]);
        assert_eq!(t.set_bits(r(10, 20), Bits::NONE), 0);
        assert_eq!(t.entries(), 1);
    }

    #[test]
    fn empty_ranges_are_no_ops() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U | D);
        let e = r(5, 5);
        assert_eq!(t.set_bits(e, W), 0);
        assert_eq!(t.clear_bits(e, U), 0);
        assert_eq!(t.set_clear_bits(e, W, U), 0);
        assert!(t.test_range(e, W)); // vacuously
        assert!(t.test_range(r(20, 20), U));
        assert!(!t.test_any(e, U));
        assert!(missing(&t, e, W).is_empty());
        assert!(t.ranges_with(e, U).is_empty());
        t.for_each(e, |_| panic!("visited a state of an empty range"));
        // Locking nothing happens at once and excludes nobody.
        t.lock_range(e);
        assert!(t.try_lock_range(e));
        t.lock_range(r(0, 10));
        assert!(t.try_lock_range(e));
        t.lock_range_waiting(e, L | W);
        assert_eq!(t.unlock_range_with(e, W, D), 0);
        t.unlock_range(e);
        t.wait_clear(e, L);
        t.unlock_range(r(0, 10));
        assert_eq!(st(&t), vec![(0, 10, U | D)]);
    }

    #[test]
    fn split_both_ends_middle_of_state() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 100), U);
        assert_eq!(t.set_bits(r(10, 20), D), 10);
        assert_eq!(st(&t), vec![(0, 10, U), (10, 20, U | D), (20, 100, U)]);
        assert_eq!(t.dirty_bytes(), 10);
        assert_eq!(t.uptodate_bytes(), 100);
        // Split exactly at a state's first / last byte.
        assert_eq!(t.set_bits(r(0, 1), W), 1);
        assert_eq!(t.set_bits(r(99, 100), W), 1);
        assert_eq!(
            st(&t),
            vec![
                (0, 1, U | W),
                (1, 10, U),
                (10, 20, U | D),
                (20, 99, U),
                (99, 100, U | W)
            ]
        );
        assert_eq!(t.writeback_bytes(), 2);
    }

    #[test]
    fn merge_left_right_both() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U);
        t.set_bits(r(10, 20), U); // merge on the left
        assert_eq!(st(&t), vec![(0, 20, U)]);

        let t = ExtentStateTree::new();
        t.set_bits(r(10, 20), U);
        t.set_bits(r(0, 10), U); // merge on the right
        assert_eq!(st(&t), vec![(0, 20, U)]);

        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U);
        t.set_bits(r(20, 30), U);
        assert_eq!(t.set_bits(r(10, 20), U), 10); // both sides
        assert_eq!(st(&t), vec![(0, 30, U)]);

        // Merge after a clear makes neighbours equal.
        t.set_bits(r(10, 20), D);
        assert_eq!(t.entries(), 3);
        assert_eq!(t.clear_bits(r(10, 20), D), 10);
        assert_eq!(st(&t), vec![(0, 30, U)]);

        // Non-adjacent equal states do not merge.
        t.set_bits(r(31, 41), U);
        assert_eq!(st(&t), vec![(0, 30, U), (31, 41, U)]);
    }

    #[test]
    fn holes_filled() {
        let t = ExtentStateTree::new();
        t.set_bits(r(10, 20), D);
        t.set_bits(r(30, 40), D);
        assert_eq!(t.set_bits(r(0, 50), U), 50);
        assert_eq!(
            st(&t),
            vec![
                (0, 10, U),
                (10, 20, U | D),
                (20, 30, U),
                (30, 40, U | D),
                (40, 50, U)
            ]
        );
        // Setting D fills holes and merges everything.
        assert_eq!(t.set_bits(r(0, 50), D), 30);
        assert_eq!(st(&t), vec![(0, 50, U | D)]);
    }

    #[test]
    fn clear_vanish_and_holes() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), D);
        assert_eq!(t.clear_bits(r(3, 6), D), 3);
        assert_eq!(st(&t), vec![(0, 3, D), (6, 10, D)]);
        assert_eq!(t.clear_bits(r(0, 101), D), 7);
        assert_eq!(st(&t), vec![]);
        assert_eq!(t.dirty_bytes(), 0);
        assert_eq!(t.clear_bits(r(0, 101), D), 0);
        // Clearing a bit the state lacks changes nothing.
        t.set_bits(r(0, 10), U);
        assert_eq!(t.clear_bits(r(0, 10), D), 0);
        assert_eq!(st(&t), vec![(0, 10, U)]);
        // Clearing every bit leaves a held lock alone: it is not a bit of the map.
        t.lock_range(r(5, 15));
        t.set_bits(r(5, 15), D);
        assert_eq!(t.clear_bits(r(0, 21), Bits::ALL), 15);
        assert_eq!(st(&t), vec![]);
        assert_eq!((t.locked_bytes(), t.locks()), (10, vec![r(5, 15)]));
        assert!(t.test_any(r(14, 20), L));
        t.unlock_range(r(5, 15));
        assert!(!t.test_any(r(0, 21), L));
    }

    #[test]
    fn set_clear_atomic() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U | D);
        t.set_bits(r(20, 30), U);
        // Dirty -> writeback over a range with a hole.
        assert_eq!(t.set_clear_bits(r(0, 30), W, D), 30);
        assert_eq!(st(&t), vec![(0, 10, U | W), (10, 20, W), (20, 30, U | W)]);
        assert_eq!(t.dirty_bytes(), 0);
        assert_eq!(t.writeback_bytes(), 30);
        // A bit in both set and clear is set.
        assert_eq!(t.set_clear_bits(r(0, 30), D, D | W), 30);
        assert_eq!(st(&t), vec![(0, 10, U | D), (10, 20, D), (20, 30, U | D)]);
    }

    #[test]
    fn test_range_and_any() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U | D);
        t.set_bits(r(10, 20), U);
        t.set_bits(r(30, 40), U);
        assert!(t.test_range(r(0, 20), U));
        assert!(!t.test_range(r(0, 20), U | D));
        assert!(t.test_range(r(2, 8), U | D));
        assert!(!t.test_range(r(0, 40), U)); // hole 20..29
        assert!(!t.test_range(r(35, 46), U)); // hole at the end
        assert!(!t.test_range(r(25, 36), U)); // hole at the start
        assert!(!t.test_range(r(100, 201), U));
        assert!(t.test_range(r(100, 201), Bits::NONE));
        assert!(t.test_any(r(0, 101), D));
        assert!(t.test_any(r(9, 10), D));
        assert!(!t.test_any(r(10, 101), D));
        assert!(!t.test_any(r(20, 30), U));
        assert!(!t.test_any(r(0, 101), Bits::NONE));
    }

    #[test]
    fn find_first_clips_and_skips() {
        let t = ExtentStateTree::new();
        assert_eq!(t.find_first(0, U), None);
        t.set_bits(r(10, 20), U);
        t.set_bits(r(20, 30), U | D);
        t.set_bits(r(40, 50), D);
        let f = |from, bits| {
            t.find_first(from, bits)
                .map(|s| (s.range.start(), s.range.end(), s.bits))
        };
        assert_eq!(f(0, D), Some((20, 30, U | D)));
        assert_eq!(f(25, D), Some((25, 30, U | D)));
        assert_eq!(f(29, D), Some((29, 30, U | D)));
        assert_eq!(f(30, D), Some((40, 50, D)));
        assert_eq!(f(0, U), Some((10, 20, U)));
        assert_eq!(f(0, W | D), Some((20, 30, U | D)));
        assert_eq!(f(50, D), None);
        assert_eq!(f(0, W), None);
        assert_eq!(f(0, Bits::NONE), None);
    }

    #[test]
    fn find_contiguous_runs() {
        let t = ExtentStateTree::new();
        t.set_bits(r(10, 20), D);
        t.set_bits(r(20, 30), D | U);
        t.set_bits(r(30, 40), U); // no D: stops a D run
        t.set_bits(r(40, 50), D);
        t.set_bits(r(60, 70), D); // hole 50..59 stops the run
        assert_eq!(t.find_contiguous(0, D, 0), Some(r(10, 30)));
        assert_eq!(t.find_contiguous(15, D, 0), Some(r(15, 30)));
        assert_eq!(t.find_contiguous(0, D | U, 0), Some(r(10, 50)));
        assert_eq!(t.find_contiguous(30, D, 0), Some(r(40, 50)));
        assert_eq!(t.find_contiguous(50, D, 0), Some(r(60, 70)));
        assert_eq!(t.find_contiguous(70, D, 0), None);
        // max_len caps inside the first state and across states.
        assert_eq!(t.find_contiguous(0, D, 5), Some(r(10, 15)));
        assert_eq!(t.find_contiguous(0, D, 15), Some(r(10, 25)));
        assert_eq!(t.find_contiguous(0, D, 20), Some(r(10, 30)));
        assert_eq!(t.find_contiguous(0, D, 1000), Some(r(10, 30)));
        assert_eq!(t.find_contiguous(12, D, 1), Some(r(12, 13)));
        assert_eq!(t.find_contiguous(0, Bits::NONE, 0), None);
    }

    fn missing(t: &ExtentStateTree, q: ByteRange, b: Bits) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        t.for_each_missing(q, b, |m| v.push((m.start(), m.end())));
        v
    }

    #[test]
    fn for_each_missing_merges_holes_and_partials() {
        let t = ExtentStateTree::new();
        assert_eq!(missing(&t, r(0, 100), U), vec![(0, 100)]);
        t.set_bits(r(10, 20), U);
        t.set_bits(r(20, 30), D); // lacks U: merges with the hole before it
        t.set_bits(r(40, 50), U | D);
        assert_eq!(
            missing(&t, r(0, 100), U),
            vec![(0, 10), (20, 40), (50, 100)]
        );
        assert_eq!(missing(&t, r(12, 46), U), vec![(20, 40)]);
        assert_eq!(missing(&t, r(10, 20), U), vec![]);
        assert_eq!(missing(&t, r(0, 100), U | D), vec![(0, 40), (50, 100)]);
        assert_eq!(missing(&t, r(0, 100), Bits::NONE), vec![]);
        assert_eq!(missing(&t, r(25, 26), U), vec![(25, 26)]);
    }

    #[test]
    fn for_each_missing_and_for_each_batches() {
        let t = ExtentStateTree::new();
        for i in 0..100u64 {
            t.set_bits(r(i * 10, i * 10 + 5), U);
        }
        let m = missing(&t, r(0, 1001), U);
        assert_eq!(m.len(), 100);
        for (i, &(a, b)) in m.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                (a, b),
                (i * 10 + 5, if i == 99 { 1001 } else { i * 10 + 10 })
            );
        }
        let mut v = Vec::new();
        t.for_each(r(2, 994), |s| v.push((s.range.start(), s.range.end())));
        assert_eq!(v.len(), 100);
        assert_eq!(v[0], (2, 5));
        assert_eq!(v[1], (10, 15));
        assert_eq!(v[99], (990, 994));
        // Callbacks run outside the mutex: re-entering the tree is fine.
        t.for_each(r(0, 1001), |s| {
            t.set_bits(s.range, D);
        });
        assert_eq!(t.dirty_bytes(), 500);
        t.for_each_missing(r(0, 1001), U, |m| {
            t.set_bits(m, U);
        });
        assert_eq!(t.uptodate_bytes(), 1001);
        t.check_invariants();
    }

    #[test]
    fn for_each_clips() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 10), U);
        t.set_bits(r(20, 30), D);
        let mut v = Vec::new();
        t.for_each(r(5, 26), |s| {
            v.push((s.range.start(), s.range.end(), s.bits))
        });
        assert_eq!(v, vec![(5, 10, U), (20, 26, D)]);
        v.clear();
        t.for_each(r(10, 20), |s| {
            v.push((s.range.start(), s.range.end(), s.bits))
        });
        assert!(v.is_empty());
    }

    #[test]
    fn adjacent_locks_stay_separate() {
        let t = ExtentStateTree::new();
        t.lock_range(r(0, 10));
        t.lock_range(r(10, 20));
        assert_eq!(t.locks(), vec![r(0, 10), r(10, 20)]);
        assert_eq!(st(&t), vec![], "a lock is not a state");
        assert_eq!(t.locked_bytes(), 20);
        // Over an existing uptodate state, which locking neither splits nor merges.
        t.set_bits(r(20, 40), U);
        t.lock_range(r(20, 30));
        t.lock_range(r(30, 40));
        assert_eq!(t.entries(), 1);
        t.unlock_range(r(0, 10));
        t.unlock_range(r(10, 20));
        assert_eq!(st(&t), vec![(20, 40, U)]);
        assert_eq!(t.locks(), vec![r(20, 30), r(30, 40)]);
        assert_eq!(
            t.unlock_range_with(r(20, 30), D, Bits::NONE),
            10,
            "dirty delta"
        );
        assert_eq!(t.unlock_range_with(r(30, 40), D, Bits::NONE), 10);
        assert_eq!(st(&t), vec![(20, 40, U | D)]);
        assert_eq!(t.locked_bytes(), 0);
        // Already dirty: no change; clearing DIRTY: negative.
        t.lock_range(r(20, 30));
        assert_eq!(t.unlock_range_with(r(20, 30), D, Bits::NONE), 0);
        t.lock_range(r(25, 40));
        assert_eq!(t.unlock_range_with(r(25, 40), Bits::NONE, D), -15);
        assert_eq!(t.dirty_bytes(), 5);
    }

    #[test]
    fn try_lock_conflicts() {
        let t = ExtentStateTree::new();
        assert!(t.try_lock_range(r(10, 20)));
        assert!(!t.try_lock_range(r(10, 20)));
        assert!(!t.try_lock_range(r(0, 11)));
        assert!(!t.try_lock_range(r(19, 31)));
        assert!(!t.try_lock_range(r(0, 101)));
        assert!(t.try_lock_range(r(0, 10)));
        assert!(t.try_lock_range(r(20, 30)));
        // WRITEBACK does not block try_lock (only LOCKED does).
        t.set_bits(r(40, 50), W);
        assert!(t.try_lock_range(r(40, 50)));
        assert_eq!(t.locked_bytes(), 40);
        t.unlock_range(r(0, 10));
        t.unlock_range(r(10, 20));
        t.unlock_range(r(20, 30));
        t.unlock_range_with(r(40, 50), Bits::NONE, W);
        assert_eq!(st(&t), vec![]);
    }

    #[test]
    fn top_of_range() {
        // The last byte a ByteRange can name is MAX - 1.
        let t = ExtentStateTree::new();
        assert_eq!(t.set_bits(r(MAX - 10, MAX), U), 10);
        assert_eq!(t.set_bits(r(MAX - 1, MAX), D), 1);
        assert_eq!(st(&t), vec![(MAX - 10, MAX - 1, U), (MAX - 1, MAX, U | D)]);
        assert!(t.test_range(r(MAX - 10, MAX), U));
        assert!(t.test_range(r(MAX - 1, MAX), U | D));
        assert!(!t.test_range(r(MAX - 11, MAX), U));
        assert_eq!(
            t.find_first(MAX - 1, D).map(|s| s.range),
            Some(r(MAX - 1, MAX))
        );
        assert_eq!(t.find_first(MAX, D), None);
        assert_eq!(t.find_contiguous(0, U, 0), Some(r(MAX - 10, MAX)));
        assert_eq!(t.find_contiguous(MAX - 4, U, 100), Some(r(MAX - 4, MAX)));
        assert_eq!(t.find_contiguous(MAX - 4, U, 2), Some(r(MAX - 4, MAX - 2)));
        assert_eq!(t.find_contiguous(MAX, U, 0), None);
        assert_eq!(missing(&t, r(MAX - 21, MAX), U), vec![(MAX - 21, MAX - 10)]);
        assert_eq!(missing(&t, r(MAX - 21, MAX), D), vec![(MAX - 21, MAX - 1)]);
        assert_eq!(t.clear_bits(r(MAX - 1, MAX), D), 1);
        assert_eq!(st(&t), vec![(MAX - 10, MAX, U)]);

        // Every representable byte: 2^64 - 1 of them, counted exactly.
        assert_eq!(t.set_bits(ByteRange::ALL, U), MAX - 10);
        assert_eq!(st(&t), vec![(0, MAX, U)]);
        assert_eq!(t.uptodate_bytes(), MAX);
        assert_eq!(t.set_bits(ByteRange::ALL, D), MAX);
        assert_eq!(t.clear_bits(r(5, 6), D), 1);
        assert_eq!(t.dirty_bytes(), MAX - 1);
        assert_eq!(t.clear_bits(ByteRange::ALL, D), MAX - 1);
        assert_eq!(t.dirty_bytes(), 0);
        assert_eq!(t.clear_bits(ByteRange::from_offset(1), U), MAX - 1);
        assert_eq!(st(&t), vec![(0, 1, U)]);
        assert_eq!(t.uptodate_bytes(), 1);

        // Locks at the top.
        t.lock_range(r(MAX - 2, MAX));
        assert!(!t.try_lock_range(r(MAX - 1, MAX)));
        assert!(t.try_lock_range(r(MAX - 6, MAX - 2)));
        assert_eq!(t.locked_bytes(), 6);
        t.unlock_range(r(MAX - 2, MAX));
        t.unlock_range(r(MAX - 6, MAX - 2));
        t.wait_clear(ByteRange::ALL, L);
        assert_eq!(st(&t), vec![(0, 1, U)]);
    }

    #[test]
    fn counters_exact_through_splits_and_merges() {
        let t = ExtentStateTree::new();
        t.set_bits(r(0, 1000), U);
        for i in 0..50u64 {
            t.set_bits(r(i * 20, i * 20 + 10), D);
            t.check_invariants();
        }
        assert_eq!(t.dirty_bytes(), 500);
        assert_eq!(t.entries(), 100);
        t.set_clear_bits(r(0, 1000), W, D);
        assert_eq!((t.dirty_bytes(), t.writeback_bytes()), (0, 1000));
        assert_eq!(t.entries(), 1);
        t.clear_bits(r(100, 200), W | U);
        assert_eq!((t.uptodate_bytes(), t.writeback_bytes()), (900, 900));
        assert_eq!(t.entries(), 2);
        t.check_invariants();
    }

    #[test]
    fn metadata_bytes_grows_with_entries() {
        let t = ExtentStateTree::new();
        let base = t.metadata_bytes();
        for i in 0..10u64 {
            t.set_bits(r(i * 2, i * 2 + 1), U);
        }
        assert_eq!(t.metadata_bytes(), base + 10 * METADATA_BYTES_PER_ENTRY);
    }

    // ---- model-based property tests -------------------------------------

    use proptest::prelude::*;

    const N: usize = 256;

    #[derive(Debug, Clone)]
    struct Step {
        kind: u8,
        a: usize,
        len: usize,
        b1: u32,
        b2: u32,
        from: usize,
        qb: u32,
        max_len: u64,
        qs: usize,
        ql: usize,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            (0u8..3, 0..N, 1usize..=64, 0u32..16, 0u32..16),
            (0..N, 1u32..16, 0u64..20, 0..N, 1usize..=64),
        )
            .prop_map(
                |((kind, a, len, b1, b2), (from, qb, max_len, qs, ql))| Step {
                    kind,
                    a,
                    len,
                    b1,
                    b2,
                    from,
                    qb,
                    max_len,
                    qs,
                    ql,
                },
            )
    }

    /// Run `steps` against a per-byte model of bytes `base..base+N`.
    fn run_model(base: u64, steps: &[Step]) {
        let t = ExtentStateTree::new();
        let mut m = vec![0u32; N];
        let at = |i: usize| base + i as u64;
        for sp in steps {
            let s = sp.a;
            let e = (sp.a + sp.len).min(N);
            // LOCKED is not a bit of the map (locks are tested on their own).
            let (b1, b2) = (sp.b1 & !L.0, sp.b2 & !L.0);
            let (set, clear) = match sp.kind {
                0 => (b1, 0),
                1 => (0, b1),
                _ => (b1, b2),
            };
            let mut want = 0u64;
            for x in &mut m[s..e] {
                let nv = (*x & !clear) | set;
                want += (nv != *x) as u64;
                *x = nv;
            }
            let got = match sp.kind {
                0 => t.set_bits(r(at(s), at(e)), Bits(set)),
                1 => t.clear_bits(r(at(s), at(e)), Bits(clear)),
                _ => t.set_clear_bits(r(at(s), at(e)), Bits(set), Bits(clear)),
            };
            assert_eq!(got, want, "changed bytes for {sp:?}");
            compare(&t, base, &m, sp);
        }
    }

    fn compare(t: &ExtentStateTree, base: u64, m: &[u32], sp: &Step) {
        t.check_invariants();
        let at = |i: usize| base + i as u64;
        let idx = |x: u64| (x - base) as usize;
        // Bits per byte.
        let mut got = vec![0u32; N];
        let states = t.states();
        for s in &states {
            assert!(s.range.start() >= base);
            for g in &mut got[idx(s.range.start())..idx(s.range.end())] {
                *g = s.bits.0;
            }
        }
        assert_eq!(got, m);
        // Counters.
        let count = |b: Bits| m.iter().filter(|&&x| x & b.0 != 0).count() as u64;
        assert_eq!(t.uptodate_bytes(), count(U));
        assert_eq!(t.dirty_bytes(), count(D));
        assert_eq!(t.locked_bytes(), 0);
        assert_eq!(t.writeback_bytes(), count(W));
        // Entries vs maximal runs of equal non-zero bits.
        let runs = (0..N)
            .filter(|&i| m[i] != 0 && (i == 0 || m[i - 1] != m[i]))
            .count();
        assert_eq!(t.entries(), runs);
        // find_first.
        let qb = Bits(sp.qb);
        let ff = t.find_first(at(sp.from), qb);
        match (sp.from..N).find(|&i| m[i] & sp.qb != 0) {
            None => assert_eq!(ff, None),
            Some(i) => {
                let f = ff.expect("find_first missed");
                assert_eq!((f.range.start(), f.bits.0), (at(i), m[i]));
                let run_end = i + (i..N).take_while(|&j| m[j] == m[i]).count();
                assert_eq!(f.range.end(), at(run_end));
            }
        }
        // find_contiguous.
        let fc = t.find_contiguous(at(sp.from), qb, sp.max_len);
        let want = (sp.from..N).find(|&i| m[i] & sp.qb != 0).map(|i| {
            let mut j = i + 1;
            while j < N && m[j] & sp.qb != 0 {
                j += 1;
            }
            if sp.max_len > 0 {
                j = j.min(i + sp.max_len as usize);
            }
            r(at(i), at(j))
        });
        assert_eq!(fc, want, "find_contiguous {sp:?}");
        // for_each_missing, test_range, test_any, for_each over [qs, qe).
        let qs = sp.qs;
        let qe = (sp.qs + sp.ql).min(N);
        let q = r(at(qs), at(qe));
        let mut want = Vec::new();
        for (i, &x) in m.iter().enumerate().take(qe).skip(qs) {
            if x & sp.qb != sp.qb {
                match want.last_mut() {
                    Some((_, e)) if *e == at(i) => *e = at(i + 1),
                    _ => want.push((at(i), at(i + 1))),
                }
            }
        }
        let mut got = Vec::new();
        t.for_each_missing(q, qb, |g| got.push((g.start(), g.end())));
        assert_eq!(got, want, "for_each_missing {sp:?}");
        assert_eq!(t.test_range(q, qb), want.is_empty());
        let any = m[qs..qe].iter().any(|&x| x & sp.qb != 0);
        assert_eq!(t.test_any(q, qb), any);
        let mut seen = vec![0u32; N];
        let mut last: Option<u64> = None;
        t.for_each(q, |s| {
            let sr = s.range;
            assert!(sr.start() >= q.start() && sr.end() <= q.end() && !sr.is_empty());
            assert!(last.is_none_or(|l| l <= sr.start()));
            last = Some(sr.end());
            for x in &mut seen[idx(sr.start())..idx(sr.end())] {
                *x = s.bits.0;
            }
        });
        for i in 0..N {
            let w = if (qs..qe).contains(&i) { m[i] } else { 0 };
            assert_eq!(seen[i], w);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn prop_matches_byte_model(steps in prop::collection::vec(step(), 1..40)) {
            run_model(0, &steps);
        }

        #[test]
        fn prop_matches_byte_model_near_top(steps in prop::collection::vec(step(), 1..40)) {
            // The top N bytes a ByteRange can name: the last is u64::MAX - 1.
            run_model(u64::MAX - N as u64, &steps);
        }
    }

    // ---- threads ---------------------------------------------------------

    /// Run `f`, aborting the process if it takes longer than `secs` (a
    /// deadlock must fail the run, not hang it).
    fn with_watchdog(secs: u64, f: impl FnOnce()) {
        let (tx, rx) = mpsc::channel::<()>();
        let wd = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!("watchdog: test did not finish in {secs} s (deadlock?)");
                std::process::abort();
            }
        });
        f();
        tx.send(()).unwrap();
        wd.join().unwrap();
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn threaded_locks_are_exclusive() {
        const SPACE: u64 = 512;
        const THREADS: u32 = 8;
        const ITERS: usize = 1000;
        with_watchdog(60, || {
            let t = Arc::new(ExtentStateTree::new());
            let owner: Arc<Vec<AtomicU32>> =
                Arc::new((0..SPACE).map(|_| AtomicU32::new(0)).collect());
            let handles: Vec<_> = (1..=THREADS)
                .map(|id| {
                    let t = Arc::clone(&t);
                    let owner = Arc::clone(&owner);
                    thread::spawn(move || {
                        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64) << 32);
                        for _ in 0..ITERS {
                            let s = rng.below(SPACE);
                            let q = r(s, (s + 1 + rng.below(64)).min(SPACE));
                            match rng.below(3) {
                                0 => t.lock_range(q),
                                1 => t.lock_range_waiting(q, W),
                                _ => {
                                    if !t.try_lock_range(q) {
                                        continue;
                                    }
                                }
                            }
                            for o in &owner[q.start() as usize..q.end() as usize] {
                                assert_eq!(
                                    o.compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire),
                                    Ok(0),
                                    "byte locked twice"
                                );
                            }
                            assert!(t.test_range(q, L));
                            if rng.below(4) == 0 {
                                thread::yield_now();
                            }
                            for o in &owner[q.start() as usize..q.end() as usize] {
                                assert_eq!(
                                    o.compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire),
                                    Ok(id)
                                );
                            }
                            // Start "writeback" while unlocking, end it right after.
                            t.unlock_range_with(q, W, D);
                            t.clear_bits(q, W);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            t.check_invariants();
            assert_eq!(t.locked_bytes(), 0);
            assert_eq!(t.writeback_bytes(), 0);
            assert_eq!(t.entries(), 0);
        });
    }

    #[test]
    fn lock_waiting_for_writeback() {
        with_watchdog(60, || {
            let t = Arc::new(ExtentStateTree::new());
            t.set_bits(r(0, 100), U | W);
            let got = Arc::new(AtomicBool::new(false));
            let h = {
                let (t, got) = (Arc::clone(&t), Arc::clone(&got));
                thread::spawn(move || {
                    t.lock_range_waiting(r(50, 61), W);
                    got.store(true, Ordering::SeqCst);
                })
            };
            // A plain lock_range on the same bytes does not wait for WRITEBACK.
            assert!(t.try_lock_range(r(0, 10)));
            thread::sleep(Duration::from_millis(100));
            assert!(!got.load(Ordering::SeqCst), "locked while under writeback");
            // Setting bits does not release it; clearing an unrelated range neither.
            t.set_bits(r(50, 61), D);
            t.clear_bits(r(0, 41), W);
            thread::sleep(Duration::from_millis(50));
            assert!(!got.load(Ordering::SeqCst));
            t.clear_bits(r(41, 100), W);
            h.join().unwrap();
            assert!(got.load(Ordering::SeqCst));
            assert!(t.test_range(r(50, 61), L | D | U));
            t.unlock_range(r(50, 61));
            t.unlock_range(r(0, 10));
            assert_eq!(st(&t), vec![(0, 50, U), (50, 61, U | D), (61, 100, U)]);
        });
    }

    #[test]
    fn wait_clear_and_blocking_lock() {
        with_watchdog(60, || {
            let t = Arc::new(ExtentStateTree::new());
            t.lock_range(r(0, 10));
            t.set_bits(r(100, 110), W);
            let h1 = {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    t.lock_range(r(5, 15));
                    t.unlock_range(r(5, 15));
                })
            };
            let h2 = {
                let t = Arc::clone(&t);
                thread::spawn(move || t.wait_clear(r(0, 201), W))
            };
            thread::sleep(Duration::from_millis(50));
            assert!(!h1.is_finished() && !h2.is_finished());
            t.unlock_range(r(0, 10));
            h1.join().unwrap();
            assert!(!h2.is_finished());
            t.clear_bits(r(100, 110), W);
            h2.join().unwrap();
            assert_eq!(t.entries(), 0);
        });
    }
}
