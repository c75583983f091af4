//! Fuzz `ExtentStateTree` against a naive per-byte model.
//!
//! The model keeps one `u32` of bits per byte for two windows of `W` bytes each:
//! * window A at a base chosen by the input (0, adjacent to window B, mid-space, or an
//!   arbitrary 64-bit value), and
//! * window B at the very top of the space, `[u64::MAX - W + 1, u64::MAX]`,
//!
//! so that `end + 1`, `start - 1` and length arithmetic at both ends of the `u64` space is
//! exercised. Every byte outside the windows is a hole. Mutations (set/clear/set_clear,
//! locks and unlocks) stay inside one window; queries (test_range, test_any, find_first,
//! find_contiguous, for_each_missing, for_each) may also span the gap between the windows and
//! reach 0 and `u64::MAX`.
//!
//! After every operation: the returned value is compared with the model, `check_invariants()`
//! runs, `states()` is expanded byte by byte and compared with the model (no state may touch
//! the gap), and dirty/uptodate/writeback/locked byte counters are compared with the model.
#![no_main]

use extentfs::extent::state::{Bits, ExtentState, ExtentStateTree};
use libfuzzer_sys::fuzz_target;

/// Bytes per window.
const W: u64 = 512;
const B_BASE: u64 = u64::MAX - W + 1;
const MAX_OPS: usize = 512;

const LOCKED: u32 = Bits::LOCKED.0;

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    /// A bit set: the five named bits plus one unnamed high bit, or (rarely) all bits.
    fn bits(&mut self) -> Bits {
        let b = self.u8();
        if b == 0xff {
            return Bits::ALL;
        }
        let mut v = u32::from(b & 0x1f);
        if b & 0x20 != 0 {
            v |= 1 << 31;
        }
        Bits(v)
    }
}

struct Model {
    a_base: u64,
    /// Window A bytes then window B bytes.
    bytes: Vec<u32>,
}

impl Model {
    fn new(a_base: u64) -> Model {
        assert!(a_base <= B_BASE - W);
        Model {
            a_base,
            bytes: vec![0; 2 * W as usize],
        }
    }

    fn idx(&self, addr: u64) -> Option<usize> {
        if addr >= self.a_base && addr - self.a_base < W {
            Some((addr - self.a_base) as usize)
        } else if addr >= B_BASE {
            Some((W + (addr - B_BASE)) as usize)
        } else {
            None
        }
    }

    fn addr(&self, i: usize) -> u64 {
        let i = i as u64;
        if i < W {
            self.a_base + i
        } else {
            B_BASE + (i - W)
        }
    }

    fn get(&self, addr: u64) -> u32 {
        self.idx(addr).map_or(0, |i| self.bytes[i])
    }

    /// Maximal runs of equal bits covering all of `[0, u64::MAX]` (holes are bits 0).
    fn runs(&self) -> Vec<(u64, u64, u32)> {
        let mut pieces: Vec<(u64, u64, u32)> = Vec::with_capacity(2 * W as usize + 3);
        if self.a_base > 0 {
            pieces.push((0, self.a_base - 1, 0));
        }
        for i in 0..W as usize {
            let a = self.addr(i);
            pieces.push((a, a, self.bytes[i]));
        }
        let a_end = self.a_base + W - 1;
        if a_end + 1 < B_BASE {
            pieces.push((a_end + 1, B_BASE - 1, 0));
        }
        for i in W as usize..2 * W as usize {
            let a = self.addr(i);
            pieces.push((a, a, self.bytes[i]));
        }
        let mut runs: Vec<(u64, u64, u32)> = Vec::with_capacity(pieces.len());
        for p in pieces {
            match runs.last_mut() {
                Some(last) if last.2 == p.2 && last.1 + 1 == p.0 => last.1 = p.1,
                _ => runs.push(p),
            }
        }
        runs
    }

    /// Apply `(old & !clear) | set` to `[start, end]` (inside the windows); bytes changed.
    fn modify(&mut self, start: u64, end: u64, set: u32, clear: u32) -> u64 {
        let mut changed = 0;
        let mut a = start;
        loop {
            let i = self.idx(a).expect("model range outside the windows");
            let nb = (self.bytes[i] & !clear) | set;
            if nb != self.bytes[i] {
                self.bytes[i] = nb;
                changed += 1;
            }
            if a == end {
                break;
            }
            a += 1;
        }
        changed
    }

    fn all(&self, start: u64, end: u64, pred: impl Fn(u32) -> bool) -> bool {
        self.runs()
            .iter()
            .filter(|r| r.1 >= start && r.0 <= end)
            .all(|r| pred(r.2))
    }

    fn count(&self, bit: u32) -> u64 {
        self.bytes.iter().filter(|&&b| b & bit == bit).count() as u64
    }

    fn test_range(&self, start: u64, end: u64, bits: u32) -> bool {
        bits == 0 || self.all(start, end, |b| b & bits == bits)
    }

    fn test_any(&self, start: u64, end: u64, bits: u32) -> bool {
        bits != 0 && !self.all(start, end, |b| b & bits == 0)
    }

    /// First byte `>= from` having any of `bits`.
    fn first_with(&self, from: u64, bits: u32) -> Option<u64> {
        if bits == 0 {
            return None;
        }
        self.runs()
            .iter()
            .find(|r| r.1 >= from && r.2 & bits != 0)
            .map(|r| r.0.max(from))
    }

    fn find_contiguous(&self, from: u64, bits: u32, max_len: u64) -> Option<(u64, u64)> {
        let rs = self.first_with(from, bits)?;
        let runs = self.runs();
        let k = runs.iter().position(|r| r.1 >= rs).unwrap();
        let mut re = runs[k].1;
        for r in &runs[k + 1..] {
            if r.2 & bits == 0 {
                break;
            }
            re = r.1;
        }
        if max_len > 0 {
            re = re.min(rs.saturating_add(max_len - 1));
        }
        Some((rs, re))
    }

    fn missing(&self, start: u64, end: u64, bits: u32) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        if bits == 0 {
            return out;
        }
        for r in self.runs() {
            if r.1 < start || r.0 > end || r.2 & bits == bits {
                continue;
            }
            let (s, e) = (r.0.max(start), r.1.min(end));
            match out.last_mut() {
                Some(last) if last.1 + 1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// A range inside one window (for mutations).
fn window_range(inp: &mut Input, m: &Model) -> (u64, u64) {
    let sel = inp.u8();
    let off = u64::from(inp.u16()) % W;
    let len = 1 + u64::from(inp.u16()) % (W - off);
    // Bias towards short ranges so that many states are created.
    let len = if sel & 2 == 0 {
        len.min(1 + (sel as u64 >> 2) % 16)
    } else {
        len
    };
    let base = if sel & 1 == 0 { m.a_base } else { B_BASE };
    (base + off, base + off + (len - 1))
}

/// Any interesting point: inside a window, at either edge of the space or of the gap.
fn point(inp: &mut Input, m: &Model) -> u64 {
    let sel = inp.u8();
    let off = u64::from(inp.u16()) % W;
    match sel % 4 {
        0 => m.a_base + off,
        1 => B_BASE + off,
        2 => match off % 6 {
            0 => 0,
            1 => u64::MAX,
            2 => m.a_base.saturating_sub(1),
            3 => m.a_base + W, // first byte of the gap (or B_BASE if adjacent)
            4 => B_BASE - 1,
            _ => m.a_base + W + (B_BASE - (m.a_base + W)) / 2,
        },
        _ => u64::MAX - off,
    }
}

/// A range for queries: in a window, or between two arbitrary points.
fn query_range(inp: &mut Input, m: &Model) -> (u64, u64) {
    if inp.u8() & 1 == 0 {
        window_range(inp, m)
    } else {
        let (a, b) = (point(inp, m), point(inp, m));
        (a.min(b), a.max(b))
    }
}

fn check_against_model(t: &ExtentStateTree, m: &Model, ctx: &str) {
    t.check_invariants();
    let states = t.states();
    let mut seen = vec![0u32; m.bytes.len()];
    for st in &states {
        assert!(
            st.end - st.start < 2 * W,
            "{ctx}: state {st} is longer than both windows"
        );
        let mut a = st.start;
        loop {
            let i = m
                .idx(a)
                .unwrap_or_else(|| panic!("{ctx}: state {st} covers byte {a} outside the windows"));
            seen[i] = st.bits.0;
            if a == st.end {
                break;
            }
            a += 1;
        }
    }
    if seen != m.bytes {
        let i = (0..seen.len()).find(|&i| seen[i] != m.bytes[i]).unwrap();
        panic!(
            "{ctx}: byte {} has bits {:#x} in the tree, {:#x} in the model; states {:?}",
            m.addr(i),
            seen[i],
            m.bytes[i],
            states
        );
    }
    assert_eq!(t.entries(), states.len(), "{ctx}: entries()");
    assert_eq!(
        t.dirty_bytes(),
        m.count(Bits::DIRTY.0),
        "{ctx}: dirty_bytes"
    );
    assert_eq!(
        t.uptodate_bytes(),
        m.count(Bits::UPTODATE.0),
        "{ctx}: uptodate_bytes"
    );
    assert_eq!(
        t.writeback_bytes(),
        m.count(Bits::WRITEBACK.0),
        "{ctx}: writeback_bytes"
    );
    assert_eq!(t.locked_bytes(), m.count(LOCKED), "{ctx}: locked_bytes");
}

/// `find_first` checked byte-wise against the model and exactly against `states()`
/// (LOCKED states are never merged, so their ends depend on history, not only on the bytes).
fn check_find_first(t: &ExtentStateTree, m: &Model, from: u64, bits: Bits, ctx: &str) {
    let got = t.find_first(from, bits);
    let want_start = m.first_with(from, bits.0);
    assert_eq!(got.map(|s| s.start), want_start, "{ctx}: find_first start");
    let Some(got) = got else { return };
    let from_states = t
        .states()
        .into_iter()
        .find(|s| s.end >= from && s.bits.intersects(bits))
        .map(|s| ExtentState {
            start: s.start.max(from),
            ..s
        });
    assert_eq!(Some(got), from_states, "{ctx}: find_first vs states()");
    assert_eq!(got.bits.0, m.get(got.start), "{ctx}: find_first bits");
    assert!(
        m.all(got.start, got.end, |b| b == got.bits.0),
        "{ctx}: find_first returned {got}, which does not have uniform bits in the model"
    );
    if got.bits.0 & LOCKED == 0 && got.end < u64::MAX {
        assert_ne!(
            m.get(got.end + 1),
            got.bits.0,
            "{ctx}: find_first returned {got}, not a maximal unlocked state"
        );
    }
}

fn check_for_each(t: &ExtentStateTree, m: &Model, start: u64, end: u64, ctx: &str) {
    let mut got: Vec<ExtentState> = Vec::new();
    t.for_each(start, end, |s| got.push(s));
    let mut want: Vec<ExtentState> = Vec::new();
    for s in t.states() {
        if s.end >= start && s.start <= end {
            want.push(ExtentState {
                start: s.start.max(start),
                end: s.end.min(end),
                bits: s.bits,
            });
        }
    }
    assert_eq!(got, want, "{ctx}: for_each");
    for s in &got {
        assert!(
            m.all(s.start, s.end, |b| b == s.bits.0),
            "{ctx}: for_each gave {s}, which the model disagrees with"
        );
    }
}

fn run(data: &[u8]) {
    let mut inp = Input { data };
    let a_base = match inp.u8() % 4 {
        0 => 0,
        1 => B_BASE - W, // adjacent to window B: one contiguous 2W window at the top
        2 => (1 << 63) - W / 2,
        _ => inp.u64() % (B_BASE - W + 1),
    };
    let mut m = Model::new(a_base);
    let t = ExtentStateTree::new();
    // Locks taken through try_lock_range / lock_range, to unlock later.
    let mut held: Vec<(u64, u64)> = Vec::new();

    for n in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let ctx;
        match op % 13 {
            0 => {
                let (s, e) = window_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: set_bits({s}, {e}, {b})");
                let got = t.set_bits(s, e, b);
                assert_eq!(got, m.modify(s, e, b.0, 0), "{ctx}: bytes changed");
            }
            1 => {
                let (s, e) = window_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: clear_bits({s}, {e}, {b})");
                let got = t.clear_bits(s, e, b);
                assert_eq!(got, m.modify(s, e, 0, b.0), "{ctx}: bytes changed");
            }
            2 => {
                let (s, e) = window_range(&mut inp, &m);
                let (set, clear) = (inp.bits(), inp.bits());
                ctx = format!("op {n}: set_clear_bits({s}, {e}, {set}, {clear})");
                let got = t.set_clear_bits(s, e, set, clear);
                assert_eq!(got, m.modify(s, e, set.0, clear.0), "{ctx}: bytes changed");
            }
            3 => {
                let (s, e) = query_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: test_range({s}, {e}, {b})");
                assert_eq!(t.test_range(s, e, b), m.test_range(s, e, b.0), "{ctx}");
            }
            4 => {
                let (s, e) = query_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: test_any({s}, {e}, {b})");
                assert_eq!(t.test_any(s, e, b), m.test_any(s, e, b.0), "{ctx}");
            }
            5 => {
                let from = point(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: find_first({from}, {b})");
                check_find_first(&t, &m, from, b, &ctx);
            }
            6 => {
                let from = point(&mut inp, &m);
                let b = inp.bits();
                let max_len = match inp.u8() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => u64::from(inp.u16() % 1100),
                };
                ctx = format!("op {n}: find_contiguous({from}, {b}, {max_len})");
                assert_eq!(
                    t.find_contiguous(from, b, max_len),
                    m.find_contiguous(from, b.0, max_len),
                    "{ctx}"
                );
            }
            7 => {
                let (s, e) = query_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: for_each_missing({s}, {e}, {b})");
                let mut got = Vec::new();
                t.for_each_missing(s, e, b, |a, z| got.push((a, z)));
                assert_eq!(got, m.missing(s, e, b.0), "{ctx}");
            }
            8 => {
                let (s, e) = window_range(&mut inp, &m);
                ctx = format!("op {n}: try_lock_range({s}, {e})");
                let want = !m.test_any(s, e, LOCKED);
                assert_eq!(t.try_lock_range(s, e), want, "{ctx}");
                if want {
                    m.modify(s, e, LOCKED, 0);
                    held.push((s, e));
                }
            }
            9 => {
                // Unlock a held lock, or an arbitrary range; only if the model says the whole
                // range is LOCKED (unlocking anything else is a caller bug, debug-asserted).
                let pick = inp.u8();
                let (s, e) = if !held.is_empty() && pick & 1 == 0 {
                    held.swap_remove(usize::from(pick >> 1) % held.len())
                } else {
                    window_range(&mut inp, &m)
                };
                let with = pick & 2 != 0;
                let (set, clear) = if with {
                    (inp.bits(), inp.bits())
                } else {
                    (Bits::NONE, Bits::NONE)
                };
                ctx = format!("op {n}: unlock_range_with({s}, {e}, {set}, {clear})");
                if m.test_range(s, e, LOCKED) {
                    if with {
                        t.unlock_range_with(s, e, set, clear);
                    } else {
                        t.unlock_range(s, e);
                    }
                    m.modify(s, e, set.0 & !LOCKED, clear.0 | LOCKED);
                }
            }
            10 => {
                // Blocking lock, only when the model says it cannot block.
                let (s, e) = window_range(&mut inp, &m);
                let also = inp.bits() & !Bits::LOCKED;
                ctx = format!("op {n}: lock_range_waiting({s}, {e}, {also})");
                if !m.test_any(s, e, LOCKED | also.0) {
                    t.lock_range_waiting(s, e, also);
                    m.modify(s, e, LOCKED, 0);
                    held.push((s, e));
                }
            }
            11 => {
                let (s, e) = query_range(&mut inp, &m);
                ctx = format!("op {n}: for_each({s}, {e})");
                check_for_each(&t, &m, s, e, &ctx);
            }
            _ => {
                // wait_clear on a range the model says is already clear: must return at once.
                let (s, e) = query_range(&mut inp, &m);
                let b = inp.bits();
                ctx = format!("op {n}: wait_clear({s}, {e}, {b})");
                if !m.test_any(s, e, b.0) {
                    t.wait_clear(s, e, b);
                }
            }
        }
        check_against_model(&t, &m, &ctx);
    }
}

fuzz_target!(|data: &[u8]| run(data));
