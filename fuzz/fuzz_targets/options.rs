//! Fuzz the mount option parser: `MountConfig::apply`, `parse_size`, `parse_fraction`,
//! `parse_duration` and `MountConfig::defaults`.
//!
//! Checked for every input (beyond "does not panic"):
//! * an accepted option string leaves a config within the documented bounds
//!   (cache_size in [MIN_CACHE_SIZE, 16T], dirty_limit in [0.01, 1], dirty_expire in
//!   [1ms, 1h], writeback_threads and threads in [1, 64], log_file non-empty);
//! * a rejected one gives a non-empty, single-line message;
//! * `apply(a,b,c)` behaves exactly like `apply(a)`, `apply(b)`, `apply(c)` in turn (same
//!   result, same config, stopping at the first error), and applying is deterministic;
//! * the three value parsers return only values within their documented ranges, and
//!   `parse_size` of a plain integer with a unit agrees with exact 128-bit arithmetic.
//!
//! Input layout: byte 0 picks the machine for `defaults` (RAM size and CPU count), the rest
//! (lossily decoded as UTF-8) is the `-o` string.
#![no_main]

use extentfs::options::{parse_duration, parse_fraction, parse_size, MountConfig, MIN_CACHE_SIZE};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fn line_breaks(s: &str) -> usize {
    s.chars().filter(|&c| c == '\n' || c == '\r').count()
}

fn check_message(input: &str, msg: &str) {
    assert!(!msg.is_empty(), "empty error message for {input:?}");
    assert!(
        line_breaks(msg) == 0,
        "error message is not a single line for {input:?}: {msg:?}"
    );
}

fn check_config(c: &MountConfig, input: &str) {
    assert!(
        c.cache_size >= MIN_CACHE_SIZE && c.cache_size <= 1 << 44,
        "cache_size {} out of range after {input:?}",
        c.cache_size
    );
    assert!(
        c.dirty_limit.is_finite() && (0.01..=1.0).contains(&c.dirty_limit),
        "dirty_limit {} out of range after {input:?}",
        c.dirty_limit
    );
    assert!(
        c.dirty_expire >= Duration::from_millis(1) && c.dirty_expire <= Duration::from_secs(3600),
        "dirty_expire {:?} out of range after {input:?}",
        c.dirty_expire
    );
    assert!(
        (1..=64).contains(&c.writeback_threads),
        "writeback_threads {} after {input:?}",
        c.writeback_threads
    );
    assert!(
        (1..=64).contains(&c.threads),
        "threads {} after {input:?}",
        c.threads
    );
    if let Some(l) = &c.log_file {
        assert!(!l.is_empty(), "empty log_file after {input:?}");
    }
}

/// Exact value of `<digits><unit>` (no '.'), or None if it is not of that form or does not
/// fit in a u64. Independent of the parser: 128-bit arithmetic, explicit unit table.
fn exact_integer_size(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || s[digits..].starts_with('.') {
        return None;
    }
    let shift = match s[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    let mut n: u128 = 0;
    for d in s[..digits].bytes() {
        n = n * 10 + u128::from(d - b'0');
        if n > u128::from(u64::MAX) {
            return Some(None);
        }
    }
    Some(u64::try_from(n << shift).ok())
}

fn check_value_parsers(s: &str) {
    let size = parse_size(s);
    if let Some(expected) = exact_integer_size(s) {
        assert_eq!(size, expected, "parse_size({s:?})");
    }
    if let Some(f) = parse_fraction(s) {
        assert!(
            f.is_finite() && (0.01..=1.0).contains(&f),
            "parse_fraction({s:?}) = {f}"
        );
    }
    if let Some(d) = parse_duration(s) {
        assert!(
            d >= Duration::from_millis(1) && d <= Duration::from_secs(3600),
            "parse_duration({s:?}) = {d:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&machine, rest)) = data.split_first() else {
        return;
    };
    let input = String::from_utf8_lossy(rest);
    let input: &str = &input;

    // Defaults for some machine: 2 MiB-aligned pool within [MIN_CACHE_SIZE, 8G].
    // 0..63 units of MiB, GiB, TiB or PiB.
    let ram = u64::from(machine & 0x3f) << (20 + 10 * u32::from(machine >> 6));
    let cpus = usize::from(machine % 64) + 1;
    let base = MountConfig::defaults(ram, cpus);
    assert!(
        base.cache_size >= MIN_CACHE_SIZE && base.cache_size <= 8 << 30,
        "defaults({ram}, {cpus}).cache_size = {}",
        base.cache_size
    );
    assert_eq!(
        base.cache_size % (2 << 20),
        0,
        "defaults({ram}, {cpus}) not 2M-aligned"
    );
    check_config(&base, "<defaults>");

    // The whole string at once.
    let mut whole = base.clone();
    let r_whole = whole.apply(input);
    match &r_whole {
        Ok(()) => check_config(&whole, input),
        Err(e) => check_message(input, &e.to_string()),
    }

    // Deterministic.
    let mut again = base.clone();
    assert_eq!(
        again.apply(input),
        r_whole,
        "apply not deterministic for {input:?}"
    );
    assert_eq!(again, whole);

    // Option by option, stopping at the first error, is the same thing.
    let mut piecewise = base.clone();
    let mut r_piece = Ok(());
    for piece in input.split(',') {
        r_piece = piecewise.apply(piece);
        if r_piece.is_err() {
            break;
        }
        check_config(&piecewise, piece);
    }
    assert_eq!(r_piece, r_whole, "piecewise result differs for {input:?}");
    assert_eq!(piecewise, whole, "piecewise config differs for {input:?}");

    // The value parsers on the whole string and on every `key=value`'s value.
    check_value_parsers(input);
    for piece in input.split(',') {
        if let Some((_, v)) = piece.split_once('=') {
            check_value_parsers(v);
        }
    }
});
