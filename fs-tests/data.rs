//! Data integrity through the mount: every test keeps an in-memory model of the file
//! contents, checks what it reads through the mount against it, and after unmount (which
//! waits for the daemon's final writeback) checks SOURCE byte for byte. Each test runs in
//! both `cache=pool` and `cache=kernel` mode.

use crate::harness::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// helpers

/// The model of one file.
#[derive(Default)]
struct Model {
    data: Vec<u8>,
}

impl Model {
    fn write(&mut self, off: u64, buf: &[u8]) {
        let off = off as usize;
        let end = off + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[off..end].copy_from_slice(buf);
    }

    fn set_len(&mut self, len: u64) {
        self.data.resize(len as usize, 0);
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// What a read of `len` bytes at `off` must return.
    fn read(&self, off: u64, len: usize) -> &[u8] {
        let s = (off as usize).min(self.data.len());
        let e = (off as usize + len).min(self.data.len());
        &self.data[s..e]
    }
}

/// Unmount (waiting for the final writeback), require a clean exit, then compare SOURCE.
#[track_caller]
fn unmount_and_compare(m: &mut Mount, files: &[(&str, &[u8])]) {
    let st = m.unmount();
    assert!(st.success(), "[{}] daemon exit status {st}", m.opts);
    for (name, want) in files {
        let got = std::fs::read(m.src_path(name))
            .unwrap_or_else(|e| panic!("[{}] SOURCE/{name}: {e}", m.opts));
        check_bytes(
            &format!("[{}] SOURCE/{name} after unmount", m.opts),
            &got,
            want,
        );
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn cvt(r: libc::c_int, what: &str) {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) {
    // SAFETY: fallocate takes no pointers; `f` is borrowed, so its descriptor is open across the
    // call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    cvt(r, &format!("fallocate(mode {mode:#x}, {off}, {len})"));
}

/// lseek with SEEK_DATA/SEEK_HOLE: Ok(offset) or Err(errno).
fn lseek(f: &File, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: lseek takes no pointers; `f` is borrowed, so its descriptor is open across the call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r)
    }
}

/// copy_file_range of exactly `len` bytes (looping over short copies).
fn copy_range(src: &File, mut off_in: u64, dst: &File, mut off_out: u64, len: u64) {
    let mut left = len;
    while left > 0 {
        let mut i = off_in as i64;
        let mut o = off_out as i64;
        // SAFETY: `i` and `o` are live i64s the kernel reads and updates; `src` and `dst` are
        // borrowed, so their descriptors are open across the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut i,
                dst.as_raw_fd(),
                &mut o,
                left as usize,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range({off_in} -> {off_out}, {left}) returned {n}: {}",
            std::io::Error::last_os_error()
        );
        off_in += n as u64;
        off_out += n as u64;
        left -= n as u64;
    }
}

/// A byte of the deterministic pattern at absolute offset `off` (for threaded tests).
fn pattern_byte(off: u64) -> u8 {
    let x = off.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (off >> 12) as u8
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(off + i)).collect()
}

// ---------------------------------------------------------------------------------------
// 1. random operations against a model, several handles, small pool

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    ReadWrite,
    WriteOnly,
    ReadOnly,
    Append,
}

fn open_kind(p: &Path, kind: Kind) -> File {
    let mut o = OpenOptions::new();
    match kind {
        Kind::ReadWrite => o.read(true).write(true),
        Kind::WriteOnly => o.write(true),
        Kind::ReadOnly => o.read(true),
        Kind::Append => o.append(true),
    };
    o.open(p)
        .unwrap_or_else(|e| panic!("open {} as {kind:?}: {e}", p.display()))
}

const MAX_RANDOM_FILE: u64 = 60 * MIB;

/// An offset near interesting places: anywhere, a 4 KiB edge, a 1 MiB edge, the end.
fn pick_offset(rng: &mut Rng, len: u64) -> u64 {
    let span = len.max(MIB);
    match rng.below(6) {
        0 | 1 => rng.below(span),
        2 => (rng.below(span / 4096) * 4096 + rng.below(7)).saturating_sub(3),
        3 => (rng.below(span / MIB + 1) * MIB + rng.below(9)).saturating_sub(4),
        4 => len.saturating_sub(rng.below(5000)),
        _ => rng.below(span) | 1,
    }
}

fn pick_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 1,
        1 => 1 + rng.below(100) as usize,
        2 => 4095 + rng.below(3) as usize,
        3 | 4 => 1 + rng.below(8191) as usize,
        5..=7 => 1 + rng.below(256 * KIB) as usize,
        8 => (MIB as usize) - 1 + rng.below(3) as usize,
        _ => 1 + rng.below(3 * MIB) as usize,
    }
}

fn random_ops(mode: &str, seed: u64, ops: usize) {
    // Odd seeds also write back continuously, so writeback races with the operations.
    let expire = if seed % 2 == 1 {
        ",dirty_expire=20ms"
    } else {
        ""
    };
    let mut m = Mount::new(&format!("cache_size=16M,{mode}{expire}"));
    let tag = format!("[{mode} seed {seed}]");
    let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9ABC_DEF1) | 1);
    let path = m.path("f");
    let mut model = Model::default();

    // Start from a sequentially written file of 20-40 MiB (bigger than the pool).
    {
        let mut f = File::create(&path).unwrap();
        let target = (20 + rng.below(20)) * MIB + rng.below(MIB);
        while model.len() < target {
            let n = (1 + rng.below(2 * MIB)).min(target - model.len()) as usize;
            let buf = random_bytes(&mut rng, n);
            f.write_all(&buf).unwrap();
            model.write(model.len(), &buf);
        }
    }

    let kinds = [
        Kind::ReadWrite,
        Kind::WriteOnly,
        Kind::ReadOnly,
        Kind::Append,
        Kind::ReadWrite,
        Kind::ReadOnly,
    ];
    let mut handles: Vec<File> = kinds.iter().map(|&k| open_kind(&path, k)).collect();
    let slot_of = |rng: &mut Rng, want: &[Kind]| -> usize {
        loop {
            let i = rng.below(kinds.len() as u64) as usize;
            if want.contains(&kinds[i]) {
                return i;
            }
        }
    };
    let mut seq_end = 0u64;
    for step in 0..ops {
        let what = rng.below(100);
        let len = model.len();
        match what {
            // write somewhere (overlapping, unaligned, crossing edges)
            0..=29 => {
                let off = pick_offset(&mut rng, len).min(MAX_RANDOM_FILE - 4 * MIB);
                let n = pick_len(&mut rng);
                let buf = random_bytes(&mut rng, n);
                let h = slot_of(&mut rng, &[Kind::ReadWrite, Kind::WriteOnly]);
                handles[h].write_all_at(&buf, off).unwrap();
                model.write(off, &buf);
                seq_end = off + buf.len() as u64;
            }
            // sequential: continue where the last write ended
            30..=39 => {
                let off = seq_end.min(MAX_RANDOM_FILE - 4 * MIB);
                let n = pick_len(&mut rng);
                let buf = random_bytes(&mut rng, n);
                let h = slot_of(&mut rng, &[Kind::ReadWrite, Kind::WriteOnly]);
                handles[h].write_all_at(&buf, off).unwrap();
                model.write(off, &buf);
                seq_end = off + buf.len() as u64;
            }
            // sparse: far past EOF, leaving a hole
            40..=44 => {
                if len + 8 * MIB < MAX_RANDOM_FILE {
                    let off = len + 1 + rng.below(6 * MIB);
                    let n = 1 + rng.below(64 * KIB) as usize;
                    let buf = random_bytes(&mut rng, n);
                    let h = slot_of(&mut rng, &[Kind::ReadWrite, Kind::WriteOnly]);
                    handles[h].write_all_at(&buf, off).unwrap();
                    model.write(off, &buf);
                    // The hole must read zero right away.
                    let r = slot_of(&mut rng, &[Kind::ReadWrite, Kind::ReadOnly]);
                    let hole = read_at_full(&handles[r], len, (off - len) as usize);
                    check_bytes(
                        &format!("{tag} step {step}: hole [{len}, {off})"),
                        &hole,
                        model.read(len, (off - len) as usize),
                    );
                }
            }
            // append through the O_APPEND handle
            45..=52 => {
                if len + 4 * MIB < MAX_RANDOM_FILE {
                    let n = pick_len(&mut rng).min(MIB as usize);
                    let buf = random_bytes(&mut rng, n);
                    let h = slot_of(&mut rng, &[Kind::Append]);
                    handles[h].write_all(&buf).unwrap();
                    model.write(len, &buf);
                }
            }
            // truncate down, then up again: the regrown part reads zero
            53..=56 => {
                let down = rng.below(len + 1).max(len.saturating_sub(8 * MIB));
                let up = (down + rng.below(4 * MIB)).min(MAX_RANDOM_FILE);
                let h = slot_of(&mut rng, &[Kind::ReadWrite, Kind::WriteOnly]);
                handles[h].set_len(down).unwrap();
                model.set_len(down);
                if rng.below(3) == 0 {
                    // a small write at the new EOF in between
                    let n = 1 + rng.below(5000) as usize;
                    let buf = random_bytes(&mut rng, n);
                    handles[h].write_all_at(&buf, down).unwrap();
                    model.write(down, &buf);
                }
                let up = up.max(model.len());
                handles[h].set_len(up).unwrap();
                model.set_len(up);
                let r = slot_of(&mut rng, &[Kind::ReadWrite, Kind::ReadOnly]);
                let s = down.saturating_sub(5000);
                let n = (up - s).min(2 * MIB) as usize;
                check_bytes(
                    &format!("{tag} step {step}: after truncate {len}->{down}->{up}"),
                    &read_at_full(&handles[r], s, n),
                    model.read(s, n),
                );
            }
            // read a random range (possibly past EOF)
            57..=89 => {
                let off = pick_offset(&mut rng, len);
                let n = pick_len(&mut rng);
                let r = slot_of(&mut rng, &[Kind::ReadWrite, Kind::ReadOnly]);
                check_bytes(
                    &format!("{tag} step {step}: read {n} at {off} (size {len})"),
                    &read_at_full(&handles[r], off, n),
                    model.read(off, n),
                );
            }
            // close and reopen a handle
            90..=95 => {
                let i = rng.below(kinds.len() as u64) as usize;
                handles[i] = open_kind(&path, kinds[i]);
            }
            // the size everyone sees
            _ => {
                let h = rng.below(kinds.len() as u64) as usize;
                assert_eq!(
                    handles[h].metadata().unwrap().len(),
                    len,
                    "{tag} step {step}: fstat size"
                );
                assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "{tag} stat");
            }
        }
    }
    drop(handles);
    let stats = getxattr(&m.mnt, "user.extentfs.stats").expect("stats xattr");
    // The pool is smaller than the file: eviction and writeback ran during the test.
    assert!(
        stat(&stats, "evicted_bytes") > 0,
        "{tag}: nothing evicted:\n{stats}"
    );
    assert!(
        stat(&stats, "writeback_bytes_total") > 0,
        "{tag}: nothing written back:\n{stats}"
    );
    // Whole file through a fresh handle.
    check_bytes(
        &format!("{tag} whole file at the end"),
        &std::fs::read(&path).unwrap(),
        &model.data,
    );
    unmount_and_compare(&mut m, &[("f", &model.data)]);
}

#[test]
fn random_ops_pool() {
    for seed in [1, 2, 3, 4] {
        random_ops("cache=pool", seed, 600);
    }
}

#[test]
fn random_ops_kernel() {
    for seed in [11, 12, 13, 14] {
        random_ops("cache=kernel", seed, 600);
    }
}

// ---------------------------------------------------------------------------------------
// 2. threads

/// 4 writers fill disjoint regions with pwrite while 2 readers verify what is already written.
fn threaded_disjoint(mode: &str) {
    const WRITERS: u64 = 4;
    const REGION: u64 = 5 * MIB;
    let mut m = Mount::new(&format!("cache_size=16M,{mode}"));
    let path = m.path("t");
    File::create(&path).unwrap();
    let f = Arc::new(open_rw(&path));
    let marks: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let f = f.clone();
        let marks = marks.clone();
        writers.push(std::thread::spawn(move || {
            let mut rng = Rng(100 + w);
            let base = w * REGION;
            let mut at = 0u64;
            while at < REGION {
                let n = (1 + rng.below(300 * KIB)).min(REGION - at);
                f.write_all_at(&pattern(base + at, n as usize), base + at)
                    .unwrap();
                at += n;
                marks[w as usize].store(at, Ordering::Release);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let f = open_kind(&path, Kind::ReadOnly);
        let marks = marks.clone();
        let done = done.clone();
        readers.push(std::thread::spawn(move || {
            let mut rng = Rng(200 + r);
            let mut checks = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let w = rng.below(WRITERS);
                let mark = marks[w as usize].load(Ordering::Acquire);
                if mark > 0 {
                    let off = rng.below(mark);
                    let n = (1 + rng.below(200 * KIB)).min(mark - off) as usize;
                    let abs = w * REGION + off;
                    check_bytes(
                        &format!("reader {r}: {n} bytes at {abs} (writer {w} mark {mark})"),
                        &read_at_full(&f, abs, n),
                        &pattern(abs, n),
                    );
                    checks += 1;
                }
                if finished && checks >= 20 {
                    return checks;
                }
            }
        }));
    }
    for h in writers {
        h.join().expect("writer panicked");
    }
    done.store(true, Ordering::Release);
    for h in readers {
        let checks = h.join().expect("reader panicked");
        assert!(checks >= 20);
    }
    drop(f);
    let want = pattern(0, (WRITERS * REGION) as usize);
    check_bytes(
        &format!("[{mode}] whole file after threads"),
        &std::fs::read(&path).unwrap(),
        &want,
    );
    unmount_and_compare(&mut m, &[("t", &want)]);
}

#[test]
fn threads_disjoint_pool() {
    threaded_disjoint("cache=pool");
}

#[test]
fn threads_disjoint_kernel() {
    threaded_disjoint("cache=kernel");
}

const REC: usize = 4096;

/// The content of record `rec` as written by writer `w` in its write number `seq`.
fn record(w: u64, seq: u64, rec: u64) -> Vec<u8> {
    let mut v = vec![0u8; REC];
    let mut rng = Rng((w << 48) ^ (seq << 24) ^ rec ^ 0x5555_5555);
    rng.fill(&mut v);
    v[..8].copy_from_slice(&w.to_le_bytes());
    v[8..16].copy_from_slice(&seq.to_le_bytes());
    v[16..24].copy_from_slice(&rec.to_le_bytes());
    v
}

/// Writers overwrite overlapping runs of whole 4 KiB records; every record must end up as
/// exactly one writer's record (no tearing), and from that writer its last write there.
fn threaded_overlap(mode: &str) {
    const WRITERS: u64 = 4;
    const RECORDS: u64 = 1024; // 4 MiB
    const WRITES: u64 = 150;
    let mut m = Mount::new(&format!("cache_size=16M,{mode}"));
    let path = m.path("o");
    File::create(&path)
        .unwrap()
        .set_len(RECORDS * REC as u64)
        .unwrap();
    let mut hs = Vec::new();
    for w in 0..WRITERS {
        let f = open_rw(&path);
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(300 + w);
            // last[rec] = this writer's last seq that covered rec
            let mut last: Vec<Option<u64>> = vec![None; RECORDS as usize];
            for seq in 0..WRITES {
                let max = if rng.below(4) == 0 { 300 } else { 16 };
                let n = 1 + rng.below(max);
                let first = rng.below(RECORDS - n + 1);
                let mut buf = Vec::with_capacity(n as usize * REC);
                for rec in first..first + n {
                    buf.extend_from_slice(&record(w, seq, rec));
                    last[rec as usize] = Some(seq);
                }
                // Page-aligned buffer: in cache=pool (FOPEN_DIRECT_IO) the kernel cuts a write
                // into FUSE requests by pinned user pages, so from an unaligned buffer a
                // request boundary (max_pages pages) falls inside a record and a concurrent
                // writer or reader can interleave there. Each request is atomic in extentfs.
                let mut ab = AlignedBuf::new(buf.len());
                ab.as_mut_slice().copy_from_slice(&buf);
                f.write_all_at(ab.as_slice(), first * REC as u64).unwrap();
            }
            last
        }));
    }
    // In pool mode every read request is answered under the range lock, so a reader running
    // alongside must never see a torn record either (the kernel page cache gives no such
    // guarantee between read() and write(), so no readers in kernel mode).
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    if mode == "cache=pool" {
        for r in 0..2u64 {
            let f = open_kind(&path, Kind::ReadOnly);
            let stop = stop.clone();
            readers.push(std::thread::spawn(move || {
                let mut rng = Rng(400 + r);
                let mut seen = 0u64;
                while !stop.load(Ordering::Acquire) || seen < 100 {
                    let n = 1 + rng.below(16);
                    let first = rng.below(RECORDS - n + 1);
                    let data = read_at_full(&f, first * REC as u64, n as usize * REC);
                    assert_eq!(data.len(), n as usize * REC);
                    for (i, r) in data.chunks(REC).enumerate() {
                        let rec = first + i as u64;
                        if r.iter().all(|&b| b == 0) {
                            continue;
                        }
                        let w = u64::from_le_bytes(r[..8].try_into().unwrap());
                        let seq = u64::from_le_bytes(r[8..16].try_into().unwrap());
                        assert!(
                            w < WRITERS && seq < WRITES,
                            "concurrent reader: record {rec} torn or garbage: {:02x?}",
                            &r[..24]
                        );
                        check_bytes(
                            &format!("concurrent reader: record {rec} (writer {w} seq {seq})"),
                            r,
                            &record(w, seq, rec),
                        );
                        seen += 1;
                    }
                }
            }));
        }
    }
    let lasts: Vec<Vec<Option<u64>>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Release);
    for h in readers {
        h.join().expect("reader panicked");
    }
    let check = |what: &str, data: &[u8]| {
        assert_eq!(data.len(), RECORDS as usize * REC, "{what}: size");
        for rec in 0..RECORDS {
            let r = &data[rec as usize * REC..(rec as usize + 1) * REC];
            let written: Vec<u64> = (0..WRITERS)
                .filter(|&w| lasts[w as usize][rec as usize].is_some())
                .collect();
            if written.is_empty() {
                assert!(
                    r.iter().all(|&b| b == 0),
                    "{what}: record {rec} never written but not zero"
                );
                continue;
            }
            let w = u64::from_le_bytes(r[..8].try_into().unwrap());
            let seq = u64::from_le_bytes(r[8..16].try_into().unwrap());
            assert!(
                w < WRITERS && seq < WRITES,
                "{what}: record {rec} has no valid header (torn or zero): {:02x?}",
                &r[..24]
            );
            check_bytes(
                &format!("{what}: record {rec} (header says writer {w} seq {seq})"),
                r,
                &record(w, seq, rec),
            );
            assert_eq!(
                lasts[w as usize][rec as usize],
                Some(seq),
                "{what}: record {rec} holds writer {w}'s write {seq}, which is not its last \
                 write there (no serial order explains it)"
            );
        }
    };
    check(
        &format!("[{mode}] through the mount"),
        &std::fs::read(&path).unwrap(),
    );
    let st = m.unmount();
    assert!(st.success(), "exit status {st}");
    check(
        &format!("[{mode}] SOURCE after unmount"),
        &std::fs::read(m.src_path("o")).unwrap(),
    );
}

#[test]
fn threads_overlap_pool() {
    threaded_overlap("cache=pool");
}

#[test]
fn threads_overlap_kernel() {
    threaded_overlap("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 3. a file 4x the pool

fn big_file(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,{mode}"));
    let path = m.path("big");
    let mut rng = Rng(77);
    let data = random_bytes(&mut rng, (64 * MIB) as usize);
    {
        let mut f = File::create(&path).unwrap();
        // Sequential, in chunks of uneven size.
        let mut at = 0;
        while at < data.len() {
            let n = (1 + rng.below(MIB + 12345) as usize).min(data.len() - at);
            f.write_all(&data[at..at + n]).unwrap();
            at += n;
        }
    }
    let f = File::open(&path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
    // Sequential read back in 1 MiB requests.
    let mut at = 0u64;
    while at < data.len() as u64 {
        let got = read_at_full(&f, at, MIB as usize);
        check_bytes(
            &format!("[{mode}] sequential read at {at}"),
            &got,
            &data[at as usize..(at + MIB) as usize],
        );
        at += MIB;
    }
    // Random reads.
    for i in 0..200 {
        let off = rng.below(data.len() as u64);
        let n = 1 + rng.below(512 * KIB) as usize;
        let end = (off as usize + n).min(data.len());
        check_bytes(
            &format!("[{mode}] random read {i}: {n} at {off}"),
            &read_at_full(&f, off, n),
            &data[off as usize..end],
        );
    }
    drop(f);
    unmount_and_compare(&mut m, &[("big", &data)]);
}

#[test]
fn big_file_pool() {
    big_file("cache=pool");
}

#[test]
fn big_file_kernel() {
    big_file("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 4. mmap

fn mmap_io(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,{mode}"));
    let path = m.path("mm");
    let mut rng = Rng(4242);
    let mut model = Model::default();
    let len1 = (MIB + 123) as usize;
    let f = open_rw(&path);
    f.set_len(len1 as u64).unwrap();
    model.set_len(len1 as u64);
    {
        // Write through a shared mapping, msync, read with read().
        let mut map = Mapping::new(&f, len1);
        let buf = random_bytes(&mut rng, len1 - 1000);
        map.bytes_mut()[500..500 + buf.len()].copy_from_slice(&buf);
        model.write(500, &buf);
        map.sync();
        check_bytes(
            &format!("[{mode}] read() after mmap write + msync"),
            &read_at_full(&f, 0, len1 + 10),
            &model.data,
        );
        // Write with write(), read through the same (already faulted) mapping.
        let buf = random_bytes(&mut rng, 70_000);
        f.write_all_at(&buf, 4096 * 3 + 7).unwrap();
        model.write(4096 * 3 + 7, &buf);
        check_bytes(
            &format!("[{mode}] existing mapping after write()"),
            map.bytes(),
            &model.data,
        );
    }
    {
        // ... and through a fresh mapping.
        let buf = random_bytes(&mut rng, 5000);
        f.write_all_at(&buf, 600_000).unwrap();
        model.write(600_000, &buf);
        let map = Mapping::new(&f, len1);
        check_bytes(
            &format!("[{mode}] new mapping after write()"),
            map.bytes(),
            &model.data,
        );
    }
    // Extend with ftruncate, then write the new part through a mapping.
    let len2 = (2 * MIB + 5) as usize;
    f.set_len(len2 as u64).unwrap();
    model.set_len(len2 as u64);
    {
        let mut map = Mapping::new(&f, len2);
        check_bytes(
            &format!("[{mode}] mapping after ftruncate extension"),
            map.bytes(),
            &model.data,
        );
        let buf = random_bytes(&mut rng, 300_000);
        let at = len2 - buf.len() - 1;
        map.bytes_mut()[at..at + buf.len()].copy_from_slice(&buf);
        model.write(at as u64, &buf);
        map.bytes_mut()[len2 - 1] = 0xAB;
        model.data[len2 - 1] = 0xAB;
        map.sync();
    }
    check_bytes(
        &format!("[{mode}] read() after mmap write into the extension"),
        &read_at_full(&f, 0, len2 + 100),
        &model.data,
    );
    assert_eq!(f.metadata().unwrap().len(), len2 as u64);
    // An un-synced mapping write must still reach SOURCE by unmount (munmap + close).
    {
        let mut map = Mapping::new(&f, len2);
        map.bytes_mut()[1234..1240].copy_from_slice(b"mmap!!");
        model.write(1234, b"mmap!!");
    }
    drop(f);
    check_bytes(
        &format!("[{mode}] whole file after munmap"),
        &std::fs::read(&path).unwrap(),
        &model.data,
    );
    unmount_and_compare(&mut m, &[("mm", &model.data)]);
}

#[test]
fn mmap_pool() {
    mmap_io("cache=pool");
}

#[test]
fn mmap_kernel() {
    mmap_io("cache=kernel");
}

/// One thread stores a marker in every page through a shared mapping while another pwrite()s
/// a marker elsewhere in the same pages (as xfstests' holetest, generic/346). Under
/// cache=pool the pwrite is direct and the kernel writes the mapping's pages back whole: the
/// copy a mapping faulted in before a pwrite must not undo that pwrite.
fn mmap_stores_race_pwrite(mode: &str) {
    const PAGES: usize = 4096; // 16 MiB
    const PG: usize = 4096;
    let mut m = Mount::new(&format!("cache_size=64M,{mode}"));
    let mut files = Vec::new();
    for round in 0..12u64 {
        let name = format!("race{round}");
        let f = open_rw(&m.path(&name));
        f.set_len((PAGES * PG) as u64).unwrap();
        match round % 3 {
            // Zero-filled through a mapping first: the kernel holds every page, dirty.
            0 => Mapping::new(&f, PAGES * PG).bytes_mut().fill(0),
            1 => {
                // SAFETY: fallocate takes no pointers; `f` is open across the call.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (PAGES * PG) as i64) };
                assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
            }
            _ => {} // a hole, as ftruncate left it
        }
        let mut map = Mapping::new(&f, PAGES * PG);
        let (store, write) = (0x5151_0000 + round, 0x7777_0000 + round);
        let addr = map.bytes_mut().as_mut_ptr() as usize;
        std::thread::scope(|s| {
            s.spawn(|| {
                for p in 0..PAGES {
                    let at = (addr + p * PG + 3072) as *mut u64;
                    // SAFETY: inside the mapping; only this thread touches these 8 bytes.
                    unsafe { at.write_volatile(store) };
                }
            });
            s.spawn(|| {
                for p in 0..PAGES {
                    f.write_all_at(&write.to_ne_bytes(), (p * PG + 1024) as u64)
                        .unwrap();
                }
            });
        });
        let mut want = vec![0u8; PAGES * PG];
        for p in 0..PAGES {
            want[p * PG + 1024..p * PG + 1032].copy_from_slice(&write.to_ne_bytes());
            want[p * PG + 3072..p * PG + 3080].copy_from_slice(&store.to_ne_bytes());
        }
        map.sync();
        check_bytes(
            &format!("[{mode}] round {round}: read() after the race"),
            &read_at_full(&f, 0, PAGES * PG),
            &want,
        );
        drop(map);
        files.push((name, want));
    }
    let expect: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    unmount_and_compare(&mut m, &expect);
}

#[test]
fn mmap_stores_race_pwrite_pool() {
    mmap_stores_race_pwrite("cache=pool");
}

#[test]
fn mmap_stores_race_pwrite_kernel() {
    mmap_stores_race_pwrite("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 5. O_DIRECT

fn direct_io(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,{mode}"));
    let path = m.path("d");
    let mut rng = Rng(555);
    let mut model = Model::default();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let mut big = AlignedBuf::new(MIB as usize);
    let mut small = AlignedBuf::new(4096);
    // (offset, big?) pairs: aligned, some leaving holes, some overwriting.
    let plan: [(u64, bool); 7] = [
        (0, true),
        (3 * MIB, true),
        (MIB + 4096 * 5, false),
        (8 * MIB, false),
        (512 * KIB, true),
        (4096, false),
        (3 * MIB + 4096 * 255, false),
    ];
    for (off, is_big) in plan {
        let buf = if is_big { &mut big } else { &mut small };
        rng.fill(buf.as_mut_slice());
        let n = f.write_at(buf.as_slice(), off).unwrap();
        assert_eq!(n, buf.as_slice().len(), "[{mode}] O_DIRECT write at {off}");
        model.write(off, buf.as_slice());
    }
    assert_eq!(f.metadata().unwrap().len(), model.len());
    // Aligned O_DIRECT reads of everything, 1 MiB and 4 KiB at a time.
    let mut at = 0;
    while at < model.len() {
        let n = f.read_at(big.as_mut_slice(), at).unwrap();
        let want = model.read(at, MIB as usize);
        check_bytes(
            &format!("[{mode}] O_DIRECT 1 MiB read at {at}"),
            &big.as_slice()[..n],
            want,
        );
        at += MIB;
    }
    for off in [
        0,
        4096,
        MIB + 4096 * 5,
        8 * MIB,
        5 * MIB,
        3 * MIB + 4096 * 255,
    ] {
        let n = f.read_at(small.as_mut_slice(), off).unwrap();
        check_bytes(
            &format!("[{mode}] O_DIRECT 4 KiB read at {off}"),
            &small.as_slice()[..n],
            model.read(off, 4096),
        );
    }
    // A buffered handle sees the same.
    check_bytes(
        &format!("[{mode}] buffered read after O_DIRECT writes"),
        &std::fs::read(&path).unwrap(),
        &model.data,
    );
    // Buffered write, then O_DIRECT read sees it.
    {
        let g = open_rw(&path);
        let buf = random_bytes(&mut rng, 10_000);
        g.write_all_at(&buf, 2 * MIB + 100).unwrap();
        model.write(2 * MIB + 100, &buf);
    }
    let n = f.read_at(big.as_mut_slice(), 2 * MIB).unwrap();
    check_bytes(
        &format!("[{mode}] O_DIRECT read after buffered write"),
        &big.as_slice()[..n],
        model.read(2 * MIB, MIB as usize),
    );
    drop(f);
    unmount_and_compare(&mut m, &[("d", &model.data)]);
}

#[test]
fn direct_io_pool() {
    direct_io("cache=pool");
}

#[test]
fn direct_io_kernel() {
    direct_io("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 6. unmount with dirty data

fn unmount_dirty(mode: &str) {
    let mut rng = Rng(6060);
    // Two files already exist in SOURCE with old content.
    let old_a = random_bytes(&mut rng, (4 * MIB) as usize);
    let old_b = random_bytes(&mut rng, (3 * MIB + 77) as usize);
    let (oa, ob) = (old_a.clone(), old_b.clone());
    let mut m = Mount::with_source(
        // coherence=none: every close (also of the copies of a descriptor that a process
        // forked by another test closes at exec) writes back under close-to-open, and this
        // test checks that nothing is written back before unmount.
        &format!("cache_size=64M,dirty_expire=60s,dirty_limit=100%,coherence=none,{mode}"),
        move |src| {
            std::fs::write(src.join("a"), &oa).unwrap();
            std::fs::write(src.join("b"), &ob).unwrap();
        },
    );
    let mut models: Vec<(String, Model)> = Vec::new();
    let mut files = Vec::new();
    // Overwrite parts of the old files.
    for (name, old) in [("a", &old_a), ("b", &old_b)] {
        let f = open_rw(&m.path(name));
        let mut model = Model { data: old.to_vec() };
        // 2 MiB per old file, the second write extending b.
        for off in [17, 3 * MIB] {
            let buf = random_bytes(&mut rng, MIB as usize);
            f.write_all_at(&buf, off).unwrap();
            model.write(off, &buf);
        }
        models.push((name.to_string(), model));
        files.push(f);
    }
    // New files: 26 MiB more, in uneven pieces. 30 MiB dirty in all stays under half the
    // dirty limit, so nothing is under pressure either.
    for i in 0..4 {
        let name = format!("new{i}");
        let f = open_rw(&m.path(&name));
        let mut model = Model::default();
        let size = 6 * MIB + MIB / 2;
        while model.len() < size {
            let n = (1 + rng.below(MIB)).min(size - model.len()) as usize;
            let buf = random_bytes(&mut rng, n);
            f.write_all_at(&buf, model.len()).unwrap();
            model.write(model.len(), &buf);
        }
        models.push((name, model));
        files.push(f);
    }
    // While the files stay open, nothing has expired (60 s) and there is no pressure: in
    // pool mode SOURCE still has the old bytes and none of the new files' data. (In kernel
    // mode the kernel's own writeback may push pages and times to the daemon at any moment,
    // so SOURCE may legitimately be ahead there; only the final state is checked.)
    if mode == "cache=pool" {
        check_bytes(
            "[pool] SOURCE/a early",
            &std::fs::read(m.src_path("a")).unwrap(),
            &old_a,
        );
        check_bytes(
            "[pool] SOURCE/b early",
            &std::fs::read(m.src_path("b")).unwrap(),
            &old_b,
        );
        for (name, model) in &models[2..] {
            let got = std::fs::metadata(m.src_path(name)).unwrap().len();
            assert!(
                got < model.len(),
                "[{mode}] SOURCE/{name} already has {got} of {} bytes before unmount",
                model.len()
            );
        }
    }
    // Through the mount everything is there.
    for (name, model) in &models {
        check_bytes(
            &format!("[{mode}] {name} before unmount"),
            &std::fs::read(m.path(name)).unwrap(),
            &model.data,
        );
    }
    drop(files);
    let want: Vec<(&str, &[u8])> = models
        .iter()
        .map(|(n, md)| (n.as_str(), md.data.as_slice()))
        .collect();
    unmount_and_compare(&mut m, &want);
}

#[test]
fn unmount_dirty_pool() {
    unmount_dirty("cache=pool");
}

#[test]
fn unmount_dirty_kernel() {
    unmount_dirty("cache=kernel");
}

// ---------------------------------------------------------------------------------------
// 7. metadata operations and the cache

fn metadata_ops(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,dirty_expire=60s,{mode}"));
    let mut rng = Rng(7070);
    let mut finals: Vec<(String, Vec<u8>)> = Vec::new();

    // truncate to 0, then write and read
    {
        let f = open_rw(&m.path("trunc"));
        let mut md = Model::default();
        let buf = random_bytes(&mut rng, (MIB + 5) as usize);
        f.write_all_at(&buf, 0).unwrap();
        md.write(0, &buf);
        check_bytes(
            "warm",
            &read_at_full(&f, 0, MIB as usize),
            md.read(0, MIB as usize),
        );
        f.set_len(0).unwrap();
        md.set_len(0);
        assert_eq!(
            read_at_full(&f, 0, 100).len(),
            0,
            "[{mode}] read after truncate 0"
        );
        f.write_all_at(b"hello", 10).unwrap();
        md.write(10, b"hello");
        check_bytes(
            &format!("[{mode}] truncate 0 + write"),
            &read_at_full(&f, 0, MIB as usize),
            &md.data,
        );
        assert_eq!(f.metadata().unwrap().len(), 15);
        finals.push(("trunc".into(), md.data));
    }

    // PUNCH_HOLE | KEEP_SIZE over cached and dirty data
    {
        let f = open_rw(&m.path("punch"));
        let mut md = Model::default();
        let buf = random_bytes(&mut rng, (3 * MIB) as usize);
        f.write_all_at(&buf, 0).unwrap();
        md.write(0, &buf);
        check_bytes("warm", &read_at_full(&f, 0, buf.len()), &md.data);
        let (off, len) = (100 * 4096 + 17, MIB + 333);
        fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        );
        md.write(off, &vec![0u8; len as usize]);
        assert_eq!(
            f.metadata().unwrap().len(),
            3 * MIB,
            "[{mode}] size after punch"
        );
        check_bytes(
            &format!("[{mode}] read after punch hole"),
            &read_at_full(&f, 0, (4 * MIB) as usize),
            &md.data,
        );
        // Punch a page-aligned hole reaching EOF too.
        fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            2 * MIB,
            2 * MIB,
        );
        md.write(2 * MIB, &vec![0u8; MIB as usize]);
        assert_eq!(f.metadata().unwrap().len(), 3 * MIB);
        check_bytes(
            &format!("[{mode}] read after punch to EOF"),
            &read_at_full(&f, 0, (4 * MIB) as usize),
            &md.data,
        );
        finals.push(("punch".into(), md.data));
    }

    // ZERO_RANGE inside the file and past EOF
    {
        let f = open_rw(&m.path("zero"));
        let mut md = Model::default();
        let buf = random_bytes(&mut rng, (2 * MIB) as usize);
        f.write_all_at(&buf, 0).unwrap();
        md.write(0, &buf);
        fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 4095, 3 * 4096 + 2);
        md.write(4095, &vec![0u8; 3 * 4096 + 2]);
        check_bytes(
            &format!("[{mode}] read after ZERO_RANGE"),
            &read_at_full(&f, 0, (3 * MIB) as usize),
            &md.data,
        );
        fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 2 * MIB - 10, MIB);
        md.write(2 * MIB - 10, &vec![0u8; MIB as usize]);
        assert_eq!(
            f.metadata().unwrap().len(),
            3 * MIB - 10,
            "[{mode}] ZERO_RANGE past EOF extends the size"
        );
        check_bytes(
            &format!("[{mode}] read after ZERO_RANGE past EOF"),
            &read_at_full(&f, 0, (4 * MIB) as usize),
            &md.data,
        );
        finals.push(("zero".into(), md.data));
    }

    // mode 0 allocation past EOF extends the size; KEEP_SIZE past EOF does not
    {
        let f = open_rw(&m.path("alloc"));
        let mut md = Model::default();
        let buf = random_bytes(&mut rng, 10_000);
        f.write_all_at(&buf, 0).unwrap();
        md.write(0, &buf);
        fallocate(&f, 0, 20_000, 50_000);
        md.set_len(70_000);
        assert_eq!(
            f.metadata().unwrap().len(),
            70_000,
            "[{mode}] size after fallocate 0"
        );
        check_bytes(
            &format!("[{mode}] read after fallocate 0 past EOF"),
            &read_at_full(&f, 0, 100_000),
            &md.data,
        );
        fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 60_000, MIB);
        assert_eq!(
            f.metadata().unwrap().len(),
            70_000,
            "[{mode}] KEEP_SIZE fallocate changed the size"
        );
        check_bytes(
            &format!("[{mode}] read after KEEP_SIZE fallocate"),
            &read_at_full(&f, 0, 2 * MIB as usize),
            &md.data,
        );
        // Writing past the preallocated range: the space in between reads zero.
        f.write_all_at(b"tail", 2 * MIB).unwrap();
        md.write(2 * MIB, b"tail");
        check_bytes(
            &format!("[{mode}] read after write past KEEP_SIZE allocation"),
            &read_at_full(&f, 0, 3 * MIB as usize),
            &md.data,
        );
        finals.push(("alloc".into(), md.data));
    }

    // copy_file_range between two files and within one
    {
        let a = open_rw(&m.path("cfr_a"));
        let b = open_rw(&m.path("cfr_b"));
        let mut ma = Model::default();
        let mut mb = Model::default();
        let buf = random_bytes(&mut rng, (2 * MIB) as usize);
        a.write_all_at(&buf, 0).unwrap();
        ma.write(0, &buf);
        let buf = random_bytes(&mut rng, MIB as usize);
        b.write_all_at(&buf, 0).unwrap();
        mb.write(0, &buf);
        // a[12345 .. +700001] -> b at 500000 (extends b)
        copy_range(&a, 12_345, &b, 500_000, 700_001);
        let chunk = ma.read(12_345, 700_001).to_vec();
        mb.write(500_000, &chunk);
        check_bytes(
            &format!("[{mode}] copy_file_range a->b"),
            &read_at_full(&b, 0, 2 * MIB as usize),
            &mb.data,
        );
        assert_eq!(b.metadata().unwrap().len(), mb.len());
        // within a: [0, 300000) -> 1.5 MiB + 7 (extends a past its end)
        let dst = 3 * MIB / 2 + 7 + MIB;
        copy_range(&a, 0, &a, dst, 300_000);
        let chunk = ma.read(0, 300_000).to_vec();
        ma.write(dst, &chunk);
        // and inside its size, non-overlapping
        copy_range(&a, 1000, &a, MIB + 1, 200_000);
        let chunk = ma.read(1000, 200_000).to_vec();
        ma.write(MIB + 1, &chunk);
        check_bytes(
            &format!("[{mode}] copy_file_range within a"),
            &read_at_full(&a, 0, 4 * MIB as usize),
            &ma.data,
        );
        finals.push(("cfr_a".into(), ma.data));
        finals.push(("cfr_b".into(), mb.data));
    }

    // rename over an existing, cached file: the new name shows the new bytes
    {
        let old = random_bytes(&mut rng, (MIB + 3) as usize);
        let new = random_bytes(&mut rng, (MIB / 2 + 9) as usize);
        std::fs::write(m.path("target"), &old).unwrap();
        let keep = File::open(m.path("target")).unwrap();
        check_bytes("warm", &read_at_full(&keep, 0, old.len()), &old);
        std::fs::write(m.path("incoming"), &new).unwrap();
        check_bytes("warm", &std::fs::read(m.path("incoming")).unwrap(), &new);
        std::fs::rename(m.path("incoming"), m.path("target")).unwrap();
        check_bytes(
            &format!("[{mode}] target after rename over it"),
            &std::fs::read(m.path("target")).unwrap(),
            &new,
        );
        // The handle on the replaced file still reads the old bytes.
        check_bytes(
            &format!("[{mode}] open handle on the replaced file"),
            &read_at_full(&keep, 0, old.len() + 10),
            &old,
        );
        assert!(!m.path("incoming").exists());
        finals.push(("target".into(), new));
    }

    // unlink a file with dirty data while it is open; keep using the fd
    {
        let f = open_rw(&m.path("gone"));
        let mut md = Model::default();
        let buf = random_bytes(&mut rng, (2 * MIB) as usize);
        f.write_all_at(&buf, 0).unwrap();
        md.write(0, &buf);
        std::fs::remove_file(m.path("gone")).unwrap();
        assert!(!m.path("gone").exists());
        let buf = random_bytes(&mut rng, MIB as usize + 1);
        f.write_all_at(&buf, 3 * MIB / 2).unwrap();
        md.write(3 * MIB / 2, &buf);
        assert_eq!(f.metadata().unwrap().len(), md.len());
        check_bytes(
            &format!("[{mode}] unlinked file through its fd"),
            &read_at_full(&f, 0, 4 * MIB as usize),
            &md.data,
        );
        f.sync_all().unwrap();
        check_bytes(
            &format!("[{mode}] unlinked file after fsync"),
            &read_at_full(&f, 0, 4 * MIB as usize),
            &md.data,
        );
    }

    let want: Vec<(&str, &[u8])> = finals
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    unmount_and_compare(&mut m, &want);
    assert!(
        !m.src_path("gone").exists(),
        "[{mode}] unlinked file back in SOURCE"
    );
    assert!(!m.src_path("incoming").exists());
}

#[test]
fn metadata_ops_pool() {
    metadata_ops("cache=pool");
}

#[test]
fn metadata_ops_kernel() {
    metadata_ops("cache=kernel");
}

/// Check lseek(SEEK_DATA/SEEK_HOLE) answers from `off` against the known data runs of a
/// file of `size` bytes. A filesystem may report less precise holes (a hole may be reported
/// as data, EOF is always a hole) but must never skip data or report a hole inside data.
#[track_caller]
fn check_seek(what: &str, f: &File, runs: &[(u64, u64)], size: u64, off: u64) {
    let next_data = runs.iter().find(|r| r.1 > off).map(|r| r.0.max(off));
    match (lseek(f, off as i64, libc::SEEK_DATA), next_data) {
        (Ok(r), Some(d)) => assert!(
            off <= r as u64 && r as u64 <= d,
            "{what}: SEEK_DATA from {off} gave {r}, but there is data at {d}"
        ),
        (Err(e), Some(d)) => panic!(
            "{what}: SEEK_DATA from {off} failed with errno {e}, but there is data at {d} \
             (size {size})"
        ),
        (Ok(r), None) => assert!(
            off <= r as u64 && (r as u64) < size,
            "{what}: SEEK_DATA from {off} gave {r} (no data after {off}, size {size})"
        ),
        (Err(e), None) => assert_eq!(e, libc::ENXIO, "{what}: SEEK_DATA from {off}"),
    }
    // The hole after `off`: at least the end of the run `off` is in, at most EOF, and
    // (unless EOF) not inside any run.
    let min_hole = runs
        .iter()
        .find(|r| r.0 <= off && off < r.1)
        .map_or(off, |r| r.1);
    match lseek(f, off as i64, libc::SEEK_HOLE) {
        Ok(r) => {
            let r = r as u64;
            assert!(
                min_hole <= r && r <= size,
                "{what}: SEEK_HOLE from {off} gave {r}, want a hole in [{min_hole}, {size}]"
            );
            assert!(
                r == size || !runs.iter().any(|x| x.0 <= r && r < x.1),
                "{what}: SEEK_HOLE from {off} gave {r}, which is inside data"
            );
        }
        Err(e) => panic!("{what}: SEEK_HOLE from {off} (size {size}) failed with errno {e}"),
    }
}

/// SEEK_DATA / SEEK_HOLE on a sparse file whose data is still dirty (not written back).
fn seek_data_hole(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,dirty_expire=60s,{mode}"));
    let mut rng = Rng(7171);
    let f = open_rw(&m.path("sparse"));
    let mut md = Model::default();
    let runs = [
        (0, 64 * KIB),
        (4 * MIB, 4 * MIB + 64 * KIB),
        (8 * MIB, 8 * MIB + 64 * KIB),
    ];
    for (s, e) in runs {
        let buf = random_bytes(&mut rng, (e - s) as usize);
        f.write_all_at(&buf, s).unwrap();
        md.write(s, &buf);
    }
    let size = md.len();
    assert_eq!(f.metadata().unwrap().len(), size);
    for off in [
        0,
        4096,
        64 * KIB,
        MIB,
        4 * MIB,
        4 * MIB + 5,
        4 * MIB + 64 * KIB,
        8 * MIB,
        size - 1,
    ] {
        check_seek(&format!("[{mode}] dirty sparse file"), &f, &runs, size, off);
    }
    assert_eq!(
        lseek(&f, size as i64, libc::SEEK_DATA),
        Err(libc::ENXIO),
        "[{mode}] SEEK_DATA at EOF"
    );
    assert_eq!(
        lseek(&f, size as i64, libc::SEEK_HOLE),
        Err(libc::ENXIO),
        "[{mode}] SEEK_HOLE at EOF"
    );
    check_bytes(
        &format!("[{mode}] sparse file contents"),
        &read_at_full(&f, 0, size as usize + 10),
        &md.data,
    );
    // The same after fsync (answered from SOURCE with nothing dirty).
    f.sync_all().unwrap();
    for off in [0, 64 * KIB, 4 * MIB + 5, 8 * MIB] {
        check_seek(&format!("[{mode}] after fsync"), &f, &runs, size, off);
    }
    drop(f);
    unmount_and_compare(&mut m, &[("sparse", &md.data)]);
}

#[test]
fn seek_data_hole_pool() {
    seek_data_hole("cache=pool");
}

#[test]
fn seek_data_hole_kernel() {
    seek_data_hole("cache=kernel");
}

/// BUG (cache=kernel): minimal reproduction. With the kernel page cache in writeback mode the
/// written bytes are still in the kernel, so the daemon answers FUSE_LSEEK from its own size
/// (0 here) and SOURCE: SEEK_DATA from 0 on a 4 KiB file full of data fails with ENXIO.
#[test]
fn seek_data_after_write_kernel() {
    let m = Mount::new("cache_size=16M,cache=kernel");
    let f = open_rw(&m.path("s"));
    f.write_all_at(&[7u8; 4096], 0).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 4096);
    assert_eq!(
        lseek(&f, 0, libc::SEEK_DATA),
        Ok(0),
        "SEEK_DATA from 0 right after writing 4 KiB at 0 (errno 6 = ENXIO)"
    );
}

// ---------------------------------------------------------------------------------------
// 8. fsync makes data durable in SOURCE while mounted

fn fsync_durable(mode: &str) {
    let mut m = Mount::new(&format!("cache_size=16M,dirty_expire=60s,{mode}"));
    let mut rng = Rng(8080);
    let f = open_rw(&m.path("s"));
    let mut md = Model::default();
    let buf = random_bytes(&mut rng, (3 * MIB + 11) as usize);
    f.write_all_at(&buf, 0).unwrap();
    md.write(0, &buf);
    f.sync_all().unwrap();
    check_bytes(
        &format!("[{mode}] SOURCE after fsync (still mounted)"),
        &std::fs::read(m.src_path("s")).unwrap(),
        &md.data,
    );
    // Overwrite and extend, then fdatasync.
    let buf = random_bytes(&mut rng, 200_001);
    f.write_all_at(&buf, 3 * MIB - 5).unwrap();
    md.write(3 * MIB - 5, &buf);
    f.write_all_at(b"x", 17).unwrap();
    md.write(17, b"x");
    f.sync_data().unwrap();
    check_bytes(
        &format!("[{mode}] SOURCE after fdatasync (still mounted)"),
        &std::fs::read(m.src_path("s")).unwrap(),
        &md.data,
    );
    // Truncate down plus fsync.
    f.set_len(MIB + 1).unwrap();
    md.set_len(MIB + 1);
    f.sync_all().unwrap();
    check_bytes(
        &format!("[{mode}] SOURCE after truncate + fsync"),
        &std::fs::read(m.src_path("s")).unwrap(),
        &md.data,
    );
    drop(f);
    unmount_and_compare(&mut m, &[("s", &md.data)]);
}

#[test]
fn fsync_pool() {
    fsync_durable("cache=pool");
}

#[test]
fn fsync_kernel() {
    fsync_durable("cache=kernel");
}
