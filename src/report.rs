//! Renderings of a mount's figures (as read from `user.extentfs.stats`) for `extentfs stats`
//! and `extentfs extents --map`: a one-screen summary, the full table, the OpenMetrics text
//! format, and a file's cache map. Pure functions over `key=value` pairs, so they are unit
//! tested without a mount; the catalogue below says what kind of figure each key is.

use crate::options::format_size;
use std::fmt::Write as _;

/// How a figure behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A level that goes up and down.
    Gauge,
    /// Only ever grows while the mount lives: rates are meaningful.
    Counter,
    /// Text (exported as an OpenMetrics `info` metric with the text as a label).
    Info,
}

/// The unit of a figure (OpenMetrics `# UNIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
    Ratio,
    Count,
}

/// One figure of the `user.extentfs.stats` attribute.
#[derive(Clone, Copy, Debug)]
pub struct FigureDoc {
    /// The key in `key=value`.
    pub key: &'static str,
    /// The OpenMetrics family name, without the `extentfs_` prefix (for a counter, without
    /// `_total`; it ends with the unit).
    pub metric: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

const fn fig(
    key: &'static str,
    metric: &'static str,
    kind: Kind,
    unit: Unit,
    help: &'static str,
) -> FigureDoc {
    FigureDoc {
        key,
        metric,
        kind,
        unit,
        help,
    }
}

use Kind::*;
use Unit::*;

/// Figures of a whole mount (the attribute on the mount root); see docs/stats.md.
#[rustfmt::skip]
pub const MOUNT_FIGURES: &[FigureDoc] = &[
    fig("pool_capacity_bytes", "pool_capacity_bytes", Gauge, Bytes, "Size of the page pool."),
    fig("pool_used_bytes", "pool_used_bytes", Gauge, Bytes, "Pool memory holding cached data."),
    fig("pool_free_bytes", "pool_free_bytes", Gauge, Bytes, "Free pool memory."),
    fig("dirty_bytes", "dirty_bytes", Gauge, Bytes, "Bytes not yet written back to SOURCE."),
    fig("writeback_bytes", "writeback_bytes", Gauge, Bytes, "Bytes being written to SOURCE now."),
    fig("pool_backing", "pool_backing", Info, Count, "What backs the pool: hugetlb, thp or 4k."),
    fig("huge_page_bytes", "huge_page_bytes", Gauge, Bytes, "Pool bytes backed by huge pages."),
    fig("read_requests", "read_requests", Counter, Count, "Read requests served."),
    fig("read_bytes", "read_bytes", Counter, Bytes, "Bytes returned by reads."),
    fig("read_hit_bytes", "read_hit_bytes", Counter, Bytes, "Read bytes served from the pool."),
    fig("read_miss_bytes", "read_miss_bytes", Counter, Bytes, "Read bytes read from SOURCE."),
    fig("source_read_ops", "source_read_ops", Counter, Count, "Reads that went to SOURCE."),
    fig("readahead_bytes", "readahead_bytes", Counter, Bytes, "Bytes read ahead of readers."),
    fig("read_around_bytes", "read_around_bytes", Counter, Bytes, "Read bytes read past the pool (files larger than it)."),
    fig("write_requests", "write_requests", Counter, Count, "Write requests accepted."),
    fig("write_bytes", "write_bytes", Counter, Bytes, "Bytes accepted into the pool by writes."),
    fig("writeback_ops", "writeback_ops", Counter, Count, "Writes to SOURCE by writeback."),
    fig("writeback_bytes_total", "written_back_bytes", Counter, Bytes, "Bytes written back."),
    fig("writeback_errors", "writeback_errors", Counter, Count, "Failed writebacks."),
    fig("evicted_extents", "evicted_extents", Counter, Count, "Clean extents evicted."),
    fig("evicted_bytes", "evicted_bytes", Counter, Bytes, "Clean bytes evicted."),
    fig("backpressure_waits", "backpressure_waits", Counter, Count, "Waits for writeback or eviction."),
    fig("read_hit_ratio", "read_hit_ratio", Gauge, Ratio, "Share of read bytes served from the pool."),
    fig("writeback_mean_bytes", "writeback_mean_bytes", Gauge, Bytes, "Mean size of a writeback write."),
    fig("state_tree_entries", "state_tree_entries", Gauge, Count, "Ranges in all extent state trees."),
    fig("extent_map_extents", "extent_map_extents", Gauge, Count, "Extents in all extent maps."),
    fig("metadata_bytes", "metadata_bytes", Gauge, Bytes, "Heap bytes of the trees (estimate)."),
    fig("pool_metadata_bytes", "pool_metadata_bytes", Gauge, Bytes, "Pool allocator bookkeeping."),
    fig("cached_inodes", "cached_inodes", Gauge, Count, "Files with a cache."),
    fig("known_inodes", "known_inodes", Gauge, Count, "Inodes the kernel holds references to."),
    fig("fuse_requests", "fuse_requests", Counter, Count, "FUSE requests."),
    fig("fuse_errors", "fuse_errors", Counter, Count, "FUSE error replies."),
    fig("uptime_seconds", "uptime_seconds", Gauge, Seconds, "Seconds since mount."),
    fig("revalidations", "revalidations", Counter, Count, "Checks of cached files against SOURCE."),
    fig("source_changes", "source_changes", Counter, Count, "Files found changed in SOURCE."),
    fig("coherence_dropped_bytes", "coherence_dropped_bytes", Counter, Bytes, "Clean bytes dropped as SOURCE changed."),
    fig("coherence_conflicts", "coherence_conflicts", Counter, Count, "SOURCE changes under dirty data."),
    fig("commit_syncfs", "commit_syncfs", Counter, Count, "syncfs calls that made many files durable at once."),
    fig("source_reserved_bytes", "source_reserved_bytes", Gauge, Bytes, "SOURCE space reserved for dirty pages."),
    fig("pool_resident_bytes", "pool_resident_bytes", Gauge, Bytes, "Pool memory resident now."),
    fig("pool_released_bytes", "pool_released_bytes", Counter, Bytes, "Free pool memory given back to the kernel."),
    fig("xattr_absent", "xattr_absent", Counter, Count, "getxattr answered: no such attribute."),
    fig("xattr_absent_remembered", "xattr_absent_remembered", Counter, Count, "Of those, answered without SOURCE."),
];

/// Figures of one regular file.
#[rustfmt::skip]
pub const FILE_FIGURES: &[FigureDoc] = &[
    fig("size", "file_size_bytes", Gauge, Bytes, "File size as the mount shows it."),
    fig("cached_bytes", "file_cached_bytes", Gauge, Bytes, "Pool memory mapped for the file."),
    fig("uptodate_bytes", "file_uptodate_bytes", Gauge, Bytes, "Bytes valid in the cache."),
    fig("dirty_bytes", "file_dirty_bytes", Gauge, Bytes, "Bytes not yet written back."),
    fig("writeback_bytes", "file_writeback_bytes", Gauge, Bytes, "Bytes being written back."),
    fig("state_tree_entries", "file_state_tree_entries", Gauge, Count, "Ranges in the state tree."),
    fig("extent_map_extents", "file_extent_map_extents", Gauge, Count, "Extents in the extent map."),
    fig("metadata_bytes", "file_metadata_bytes", Gauge, Bytes, "Heap bytes of its trees."),
    fig("read_hit_bytes", "file_read_hit_bytes", Counter, Bytes, "Read bytes served from the pool."),
    fig("read_miss_bytes", "file_read_miss_bytes", Counter, Bytes, "Read bytes read from SOURCE."),
    fig("last_writeback_error", "file_last_writeback_error", Info, Count, "Last writeback error."),
    fig("validator", "file_validator", Info, Count, "What was last recorded of SOURCE's file."),
];

/// `key=value` pairs of one rendering of the attribute.
pub type Figures = Vec<(String, String)>;

/// Parse the attribute's `key=value` lines.
pub fn parse(text: &str) -> Figures {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Is this the rendering of a regular file (not of a mount root)?
pub fn is_file(figs: &Figures) -> bool {
    !figs.iter().any(|(k, _)| k == "pool_capacity_bytes")
}

/// The opcode of a `fuse_OP_requests` / `fuse_OP_errors` key, and which of the two it is.
fn per_op(key: &str) -> Option<(&str, &'static str)> {
    let rest = key.strip_prefix("fuse_")?;
    if let Some(op) = rest.strip_suffix("_requests") {
        Some((op, "fuse_op_requests"))
    } else {
        rest.strip_suffix("_errors")
            .map(|op| (op, "fuse_op_errors"))
    }
}

/// What the catalogue says about `key`.
pub fn doc(key: &str, file: bool) -> Option<FigureDoc> {
    let table = if file { FILE_FIGURES } else { MOUNT_FIGURES };
    if let Some(d) = table.iter().find(|d| d.key == key) {
        return Some(*d);
    }
    if !file {
        if let Some((_, metric)) = per_op(key) {
            return Some(fig("", metric, Counter, Count, ""));
        }
    }
    None
}

fn get<'a>(figs: &'a Figures, key: &str) -> Option<&'a str> {
    figs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn num(figs: &Figures, key: &str) -> f64 {
    get(figs, key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// `950`, `4.1k`, `12.0M`, `3.2G`: counts in SI steps.
pub fn human_count(x: f64) -> String {
    let a = x.abs();
    if a < 1000.0 {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    } else if a < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if a < 1e9 {
        format!("{:.1}M", x / 1e6)
    } else {
        format!("{:.1}G", x / 1e9)
    }
}

/// `12.3 MiB/s`, or `4.1k req/s` with `what` = "req".
pub fn human_rate(per_sec: f64, unit: Unit, what: &str) -> String {
    match unit {
        Bytes => format!("{}/s", format_size(per_sec.max(0.0) as u64)),
        _ if what.is_empty() => format!("{}/s", human_count(per_sec)),
        _ => format!("{} {what}/s", human_count(per_sec)),
    }
}

/// `1h 02m`, `3m 05s`, `42s`.
fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A value in human units: sizes as `1.0 GiB`, ratios as percentages, counts as `4.1k`.
pub fn human_value(key: &str, v: &str, file: bool) -> String {
    let unit = doc(key, file).map(|d| d.unit);
    match (unit, v.parse::<f64>()) {
        (Some(Bytes), Ok(n)) => format_size(n as u64),
        (Some(Ratio), Ok(x)) => format!("{:.1}%", x * 100.0),
        (Some(Seconds), Ok(x)) => human_duration(x),
        (Some(Count), Ok(x)) if !v.contains('.') => human_count(x),
        _ => v.to_string(),
    }
}

/// The rate of `key` between two renderings `secs` apart (counters only).
fn rate(now: &Figures, prev: Option<(&Figures, f64)>, key: &str) -> Option<f64> {
    let (prev, secs) = prev?;
    if secs <= 0.0 {
        return None;
    }
    let (a, b) = (num(prev, key), num(now, key));
    (b >= a).then(|| (b - a) / secs)
}

/// The one-screen view of a mount: pool, hit ratio, dirty, writeback, evictions, requests,
/// with rates when `prev` (an earlier rendering and the seconds since) is given.
pub fn summary(title: &str, figs: &Figures, prev: Option<(&Figures, f64)>) -> String {
    if is_file(figs) {
        return table(title, figs, prev);
    }
    let sz = |k: &str| format_size(num(figs, k) as u64);
    let cnt = |k: &str| human_count(num(figs, k));
    let r = |k: &str, unit: Unit, what: &str| {
        rate(figs, prev, k)
            .map(|x| format!(", {}", human_rate(x, unit, what)))
            .unwrap_or_default()
    };
    let cap = num(figs, "pool_capacity_bytes");
    let used = num(figs, "pool_used_bytes");
    let pct = |x: f64| if cap > 0.0 { x / cap * 100.0 } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{title}: up {}, pool backed by {}",
        human_duration(num(figs, "uptime_seconds")),
        get(figs, "pool_backing").unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "  pool        {} used of {} ({:.0}%), {} free",
        sz("pool_used_bytes"),
        sz("pool_capacity_bytes"),
        pct(used),
        sz("pool_free_bytes")
    );
    let _ = writeln!(
        s,
        "  hit ratio   {:.1}% of {} read{} ({} from SOURCE{})",
        num(figs, "read_hit_ratio") * 100.0,
        sz("read_bytes"),
        r("read_bytes", Bytes, ""),
        sz("read_miss_bytes"),
        r("read_miss_bytes", Bytes, "")
    );
    let _ = writeln!(
        s,
        "  dirty       {} ({:.0}% of the pool); {} written{}",
        sz("dirty_bytes"),
        pct(num(figs, "dirty_bytes")),
        sz("write_bytes"),
        r("write_bytes", Bytes, "")
    );
    let _ = writeln!(
        s,
        "  writeback   {} in flight; {} in {} write{}{}, {} errors",
        sz("writeback_bytes"),
        sz("writeback_bytes_total"),
        cnt("writeback_ops"),
        if num(figs, "writeback_ops") == 1.0 {
            ""
        } else {
            "s"
        },
        r("writeback_bytes_total", Bytes, ""),
        cnt("writeback_errors")
    );
    let _ = writeln!(
        s,
        "  evictions   {} extents, {}{}; {} waits for room",
        cnt("evicted_extents"),
        sz("evicted_bytes"),
        r("evicted_bytes", Bytes, ""),
        cnt("backpressure_waits")
    );
    let _ = writeln!(
        s,
        "  requests    {}{}, {} errors; {} reads, {} writes",
        cnt("fuse_requests"),
        r("fuse_requests", Count, "req"),
        cnt("fuse_errors"),
        cnt("read_requests"),
        cnt("write_requests")
    );
    s
}

/// Every figure, one per line, in human units (and rates of counters when `prev` is given).
pub fn table(title: &str, figs: &Figures, prev: Option<(&Figures, f64)>) -> String {
    let file = is_file(figs);
    let mut s = format!("== {title}\n");
    for (k, v) in figs {
        let d = doc(k, file);
        let mut value = human_value(k, v, file);
        if d.is_some_and(|d| d.unit == Bytes) && value != format!("{v} B") {
            // Every figure exactly, too.
            let _ = write!(value, " ({v})");
        }
        let mut line = format!("  {k:<28} {value}");
        if let Some(d) = d.filter(|d| d.kind == Counter) {
            if let Some(x) = rate(figs, prev, k) {
                let what = if k.ends_with("requests") { "req" } else { "" };
                let _ = write!(line, "   {}", human_rate(x, d.unit, what));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// An OpenMetrics label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unit_name(u: Unit) -> Option<&'static str> {
    match u {
        Bytes => Some("bytes"),
        Seconds => Some("seconds"),
        Ratio => Some("ratio"),
        Count => None,
    }
}

/// The OpenMetrics text format (what node_exporter's textfile collector and Prometheus
/// read) of several renderings: `(path, figures)`; mounts are labelled `mountpoint`, files
/// `path`. Families are grouped (each family's samples of all paths together) and the
/// exposition ends with `# EOF`, as the format requires.
pub fn openmetrics(items: &[(String, Figures)]) -> String {
    struct Family {
        name: String,
        doc: FigureDoc,
        samples: Vec<String>,
    }
    let mut families: Vec<Family> = Vec::new();
    for (path, figs) in items {
        let file = is_file(figs);
        let path_label = if file { "path" } else { "mountpoint" };
        for (k, v) in figs {
            let Some(d) = doc(k, file) else { continue };
            let name = format!("extentfs_{}", d.metric);
            let mut labels = format!("{path_label}=\"{}\"", label(path));
            if let (false, Some((op, _))) = (file, per_op(k)) {
                if d.help.is_empty() {
                    let _ = write!(labels, ",op=\"{}\"", label(op));
                }
            }
            let sample = match d.kind {
                Info => format!("{name}_info{{{labels},value=\"{}\"}} 1", label(v)),
                Counter | Gauge => {
                    let Ok(x) = v.parse::<f64>() else { continue };
                    let suffix = if d.kind == Counter { "_total" } else { "" };
                    if v.contains('.') {
                        format!("{name}{suffix}{{{labels}}} {x}")
                    } else {
                        format!("{name}{suffix}{{{labels}}} {v}")
                    }
                }
            };
            match families.iter_mut().find(|f| f.name == name) {
                Some(f) => f.samples.push(sample),
                None => families.push(Family {
                    name,
                    doc: d,
                    samples: vec![sample],
                }),
            }
        }
    }
    let mut s = String::new();
    for f in &families {
        let kind = match f.doc.kind {
            Gauge => "gauge",
            Counter => "counter",
            Info => "info",
        };
        let _ = writeln!(s, "# TYPE {} {kind}", f.name);
        if let Some(u) = unit_name(f.doc.unit) {
            let _ = writeln!(s, "# UNIT {} {u}", f.name);
        }
        let help = match f.doc.metric {
            "fuse_op_requests" => "FUSE requests per opcode.",
            "fuse_op_errors" => "FUSE error replies per opcode.",
            _ => f.doc.help,
        };
        let _ = writeln!(s, "# HELP {} {}", f.name, help);
        for x in &f.samples {
            s.push_str(x);
            s.push('\n');
        }
    }
    s.push_str("# EOF\n");
    s
}

/// State of one range of a file in the cache map, in the order a cell shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CellState {
    NotCached,
    Clean,
    Dirty,
    Writeback,
}

impl CellState {
    pub fn glyph(self) -> char {
        match self {
            CellState::NotCached => '.',
            CellState::Clean => '=',
            CellState::Dirty => 'D',
            CellState::Writeback => 'W',
        }
    }

    /// From the bit names of a `user.extentfs.extents` line (`UPTODATE|DIRTY`, `-`).
    pub fn from_bits(bits: &str) -> CellState {
        let has = |n: &str| bits.split('|').any(|b| b == n);
        if has("WRITEBACK") || has("UNSTABLE") {
            CellState::Writeback
        } else if has("DIRTY") {
            CellState::Dirty
        } else if has("UPTODATE") {
            CellState::Clean
        } else {
            CellState::NotCached
        }
    }
}

/// Parse `user.extentfs.extents`: `start end bits` lines, inclusive byte offsets.
pub fn parse_extents(text: &str) -> Vec<(u64, u64, CellState)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let s = f.next()?.parse().ok()?;
            let e = f.next()?.parse().ok()?;
            Some((s, e, CellState::from_bits(f.next().unwrap_or("-"))))
        })
        .collect()
}

/// The cache map of a file of `size` bytes as `cells` glyphs: each cell covers
/// `size / cells` bytes; a cell with any byte under writeback shows `W`, else any dirty
/// byte `D`, else `=` when at least half of it is cached, else `.`.
pub fn map_cells(size: u64, ranges: &[(u64, u64, CellState)], cells: usize) -> String {
    if cells == 0 {
        return String::new();
    }
    let mut out = String::with_capacity(cells);
    for i in 0..cells {
        let lo = (size as u128 * i as u128 / cells as u128) as u64;
        let hi = (size as u128 * (i as u128 + 1) / cells as u128) as u64; // exclusive
        if hi <= lo {
            out.push(' ');
            continue;
        }
        let mut state = CellState::NotCached;
        let mut cached = 0u64;
        for &(s, e, st) in ranges {
            let (a, b) = (s.max(lo), e.saturating_add(1).min(hi));
            if a >= b || st == CellState::NotCached {
                continue;
            }
            cached += b - a;
            if st >= CellState::Dirty {
                state = state.max(st);
            }
        }
        if state == CellState::NotCached && cached * 2 >= hi - lo {
            state = CellState::Clean;
        }
        out.push(state.glyph());
    }
    out
}

/// The whole `--map` picture for a terminal `width` columns wide.
pub fn extent_map(name: &str, size: u64, ranges: &[(u64, u64, CellState)], width: usize) -> String {
    if size == 0 {
        return format!("{name}: empty\n");
    }
    // At most one cell per byte, so a tiny file is not drawn with gaps.
    let cells = width
        .saturating_sub(2)
        .max(10)
        .min(usize::try_from(size).unwrap_or(usize::MAX));
    let total = |want: CellState| -> u64 {
        ranges
            .iter()
            .filter(|r| r.2 == want)
            .map(|&(s, e, _)| e.min(size.saturating_sub(1)).saturating_sub(s) + 1)
            .sum()
    };
    let (clean, dirty, wb) = (
        total(CellState::Clean),
        total(CellState::Dirty),
        total(CellState::Writeback),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{name}: {}; cached {} clean, {} dirty, {} under writeback",
        format_size(size),
        format_size(clean),
        format_size(dirty),
        format_size(wb)
    );
    let _ = writeln!(s, "[{}]", map_cells(size, ranges, cells));
    let end = format_size(size);
    let _ = writeln!(s, " 0{end:>w$}", w = cells.saturating_sub(1));
    let _ = writeln!(
        s,
        " = cached   D dirty   W under writeback   . not cached   (1 cell = {})",
        format_size(size.div_ceil(cells as u64))
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figs(pairs: &[(&str, &str)]) -> Figures {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(950.0), "950");
        assert_eq!(human_count(4100.0), "4.1k");
        assert_eq!(human_count(12_345_678.0), "12.3M");
        assert_eq!(human_rate(12.3 * 1048576.0, Bytes, ""), "12.3 MiB/s");
        assert_eq!(human_rate(4100.0, Count, "req"), "4.1k req/s");
        assert_eq!(
            human_value("pool_capacity_bytes", "1073741824", false),
            "1.0 GiB"
        );
        assert_eq!(human_value("read_hit_ratio", "0.9734", false), "97.3%");
        assert_eq!(human_value("uptime_seconds", "3725.2", false), "1h 02m");
        assert_eq!(human_value("pool_backing", "thp", false), "thp");
        assert_eq!(human_value("size", "2048", true), "2.0 KiB");
    }

    #[test]
    fn every_published_key_is_in_the_catalogue() {
        // The keys docs/stats.md lists; a new figure needs a catalogue entry (kind, unit).
        let doc_md = include_str!("../docs/stats.md");
        for line in doc_md.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = line.split('|').nth(1).unwrap();
            for key in first_cell.split('`').skip(1).step_by(2) {
                if key.starts_with("user.") || key.contains("OP") {
                    continue;
                }
                let mount = doc(key, false).is_some();
                let file = doc(key, true).is_some();
                assert!(mount || file, "{key} is documented but not catalogued");
            }
        }
        for d in MOUNT_FIGURES.iter().chain(FILE_FIGURES) {
            if let Some(u) = unit_name(d.unit) {
                assert!(
                    d.metric.ends_with(u),
                    "{}: metric must end with _{u}",
                    d.key
                );
            }
            assert!(!d.metric.ends_with("_total"), "{}", d.key);
        }
    }

    #[test]
    fn summary_and_rates() {
        let a = figs(&[
            ("pool_capacity_bytes", "1073741824"),
            ("pool_used_bytes", "536870912"),
            ("pool_free_bytes", "536870912"),
            ("dirty_bytes", "1048576"),
            ("pool_backing", "thp"),
            ("read_bytes", "0"),
            ("fuse_requests", "1000"),
            ("read_hit_ratio", "0.5000"),
            ("uptime_seconds", "10.0"),
        ]);
        let mut b = a.clone();
        b[5].1 = (25u64 << 20).to_string();
        b[6].1 = "9200".into();
        let s = summary("/mnt", &b, Some((&a, 2.0)));
        assert!(s.lines().count() <= 10, "{s}");
        assert!(s.contains("512.0 MiB used of 1.0 GiB (50%)"), "{s}");
        assert!(s.contains("50.0% of 25.0 MiB read, 12.5 MiB/s"), "{s}");
        assert!(s.contains("9.2k, 4.1k req/s"), "{s}");
        assert!(s.contains("1.0 MiB (0% of the pool)"), "{s}");
        let t = table("/mnt", &b, Some((&a, 2.0)));
        assert!(t.contains("fuse_requests"), "{t}");
        assert!(t.contains("4.1k req/s"), "{t}");
        assert!(t.contains("12.5 MiB/s"), "{t}");
    }

    #[test]
    fn openmetrics_shape() {
        let m = figs(&[
            ("pool_capacity_bytes", "1073741824"),
            ("pool_backing", "thp"),
            ("read_bytes", "5"),
            ("writeback_bytes", "0"),
            ("writeback_bytes_total", "7"),
            ("fuse_read_requests", "3"),
            ("fuse_read_errors", "0"),
            ("fuse_lookup_requests", "2"),
            ("read_hit_ratio", "0.2500"),
        ]);
        let f = figs(&[("size", "10"), ("last_writeback_error", "none")]);
        let out = openmetrics(&[
            ("/m\"x".into(), m.clone()),
            ("/m/f".into(), f),
            ("/n".into(), m),
        ]);
        assert!(out.ends_with("# EOF\n"));
        assert!(
            out.contains("# TYPE extentfs_read_bytes counter\n# UNIT extentfs_read_bytes bytes\n")
        );
        assert!(out.contains("extentfs_read_bytes_total{mountpoint=\"/m\\\"x\"} 5\n"));
        assert!(out.contains("extentfs_written_back_bytes_total{mountpoint=\"/n\"} 7\n"));
        assert!(out.contains("extentfs_fuse_op_requests_total{mountpoint=\"/n\",op=\"lookup\"} 2"));
        assert!(out.contains("extentfs_pool_backing_info{mountpoint=\"/n\",value=\"thp\"} 1"));
        assert!(out.contains("extentfs_file_size_bytes{path=\"/m/f\"} 10"));
        assert!(out.contains("extentfs_read_hit_ratio{mountpoint=\"/n\"} 0.25\n"));
        // One TYPE line per family, families not interleaved.
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut dedup = types.clone();
        dedup.dedup();
        assert_eq!(types.len(), dedup.len());
        assert_eq!(out.matches("# TYPE extentfs_fuse_op_requests ").count(), 1);
    }

    #[test]
    fn map_draws_ranges_where_they_are() {
        let mib = 1u64 << 20;
        let ranges = parse_extents(&format!(
            "0 {} UPTODATE\n{} {} UPTODATE|DIRTY\n{} {} UPTODATE|WRITEBACK\n{} {} -\n",
            4 * mib - 1,
            8 * mib,
            10 * mib - 1,
            12 * mib,
            12 * mib + 4095,
            14 * mib,
            15 * mib
        ));
        let cells = map_cells(16 * mib, &ranges, 16);
        assert_eq!(cells, "====....DD..W...");
        // Half a cell cached counts as cached, less does not.
        let half = [
            (0, mib / 2 - 1, CellState::Clean),
            (mib, mib + 10, CellState::Clean),
        ];
        assert_eq!(map_cells(2 * mib, &half, 2), "=.");
        let pic = extent_map("f", 16 * mib, &ranges, 18);
        let lines: Vec<&str> = pic.lines().collect();
        assert_eq!(lines[1], "[====....DD..W...]");
        assert!(lines[0].contains("4.0 MiB clean, 2.0 MiB dirty, 4.0 KiB under writeback"));
        assert!(lines[2].ends_with("16.0 MiB"), "{pic}");
        let tiny = extent_map("t", 6, &[(0, 5, CellState::Dirty)], 80);
        assert_eq!(tiny.lines().nth(1), Some("[DDDDDD]"), "{tiny}");
        assert_eq!(extent_map("e", 0, &[], 80), "e: empty\n");
    }
}
