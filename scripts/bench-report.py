#!/usr/bin/env python3
"""Summarize a scripts/bench.sh results directory: results.json, results.md, the targets table,
ratios.png.

    scripts/bench-report.py RESULTS_DIR

Reads RESULTS_DIR/meta.json, runs/index.tsv and the raw fio JSON of every run, extra.tsv (the
non-fio jobs: network write, small files, tree walk, mount time) and perfstat-*.csv. Ratios are
always taken between figures of the same run directory, job and placement (medians over the
repetitions). Every target is judged in the placement `together` (fio and every daemon on cpu 0)
when it was measured, else in the first placement of the run; the other placements are shown as
informational. The scale target of 2 jobs is judged unpinned."""
import csv
import json
import os
import statistics
import sys

FS_LABEL = {
    "native": "native (tmpfs; disk dir for cold jobs)",
    "pool": "extentfs cache=pool",
    "kernel": "extentfs cache=kernel",
    "ptnever": "passthrough_ll cache=never",
    "ptalways": "passthrough_ll cache=always",
    "ptwb": "passthrough_ll cache=always,writeback",
    "null": "libfuse null (transport floor)",
    "netpool": "extentfs cache=pool over sshfs",
    "netkernel": "extentfs cache=kernel over sshfs",
    "sshfs": "sshfs",
    "rclone": "rclone mount --vfs-cache-mode full",
    "poolbase": "baseline binary, cache=pool",
    "kernelbase": "baseline binary, cache=kernel",
}
BASELINE = {"pool": "poolbase", "kernel": "kernelbase"}
PEER = {"pool": "ptnever", "kernel": "ptalways"}
MAIN_FS = ["native", "pool", "poolbase", "kernel", "kernelbase", "ptnever", "ptalways", "ptwb", "null"]
NET_FS = ["netpool", "netkernel", "sshfs", "rclone"]
PLACEMENT_ORDER = ["together", "apart", "unpinned"]
PLACEMENT_LABEL = {
    "together": "together (fio+daemon cpu0)",
    "apart": "apart (fio cpu0, daemon cpu1)",
    "unpinned": "unpinned",
}
JOB_ORDER = [
    "randread4k-dio", "randread4k-buf", "seqread1m-dio", "seqread1m-buf",
    "seqwrite1m-buf", "seqwrite1m-dio", "randwrite4k-buf", "randwrite4k-dio",
    "randread4k-dio-2j", "randread4k-dio-4j", "randrw4k-qd16",
    "cold-randread4k-dio", "coldall-randread4k-dio",
    "big-seqread1m-dio", "big-randread4k-dio",
    "net-randread4k-dio", "net-randread4k-buf", "net-seqread1m-buf",
]
JOB_LABEL = {
    "randread4k-dio": "rand read 4k, direct",
    "randread4k-buf": "rand read 4k, buffered",
    "seqread1m-dio": "seq read 1M, direct",
    "seqread1m-buf": "seq read 1M, buffered",
    "seqwrite1m-buf": "seq write 1M, buffered",
    "seqwrite1m-dio": "seq write 1M, direct",
    "randwrite4k-buf": "rand write 4k, buffered",
    "randwrite4k-dio": "rand write 4k, direct",
    "randread4k-dio-2j": "rand read 4k, direct, 2 jobs",
    "randread4k-dio-4j": "rand read 4k, direct, 4 jobs",
    "randrw4k-qd16": "randrw 70/30 4k, libaio qd16, direct",
    "cold-randread4k-dio": "COLD rand read 4k, direct (disk backing evicted; pool warm)",
    "coldall-randread4k-dio": "COLD rand read 4k, direct, pool dropped too",
    "big-seqread1m-dio": "file 2x cache_size: seq read 1M, direct",
    "big-randread4k-dio": "file 2x cache_size: rand read 4k, direct",
    "net-randread4k-dio": "network SOURCE, warm: rand read 4k, direct",
    "net-randread4k-buf": "network SOURCE, warm: rand read 4k, buffered",
    "net-seqread1m-buf": "network SOURCE, warm: seq read 1M, buffered",
}


def ref_job(job, fs):
    """The job whose figures of `fs` (a peer or native) compare with extentfs's `job`."""
    if job.startswith("big-"):
        return job[len("big-"):]
    if job.startswith("coldall-"):
        return "cold-" + job[len("coldall-"):]
    return job


def uses_bw(job):
    return "1m" in job


def load_fio(path):
    with open(path) as f:
        text = f.read()
    text = text[text.find("{"):]
    data = json.loads(text)
    j = data["jobs"][0]
    r, w = j["read"], j["write"]
    iops = r["iops"] + w["iops"]
    bw = r["bw_bytes"] + w["bw_bytes"]
    n = r["iops"] + w["iops"]
    lat = ((r["iops"] * r["lat_ns"]["mean"] + w["iops"] * w["lat_ns"]["mean"]) / n / 1000.0) if n else None
    return {
        "iops": iops, "bw_bytes": bw, "lat_mean_us": lat,
        "ios": r.get("total_ios", 0) + w.get("total_ios", 0),
        "read_iops": r["iops"], "write_iops": w["iops"],
        "read_lat_mean_us": r["lat_ns"]["mean"] / 1000.0 if r["iops"] else None,
        "write_lat_mean_us": w["lat_ns"]["mean"] / 1000.0 if w["iops"] else None,
        "usr_cpu": j.get("usr_cpu"), "sys_cpu": j.get("sys_cpu"),
    }


def fmt_iops(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def fmt_bw(b):
    if b is None:
        return "–"
    m = b / 1048576.0
    if m >= 1024:
        return "%.2f GiB/s" % (m / 1024)
    return "%.0f MiB/s" % m


def fmt_s(x):
    return "%.3f" % x if isinstance(x, float) else ("–" if x is None else str(x))


def fmt_ratio(x):
    return "–" if x is None else "%.2fx" % x


def load_extra(res):
    """extra.tsv -> {(job, fs, metric): [values]} and the notes."""
    vals, notes = {}, {}
    p = os.path.join(res, "extra.tsv")
    if not os.path.exists(p):
        return vals, notes
    with open(p) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                v = float(row["value"])
            except ValueError:
                v = None  # "failed"
            vals.setdefault((row["job"], row["fs"], row["metric"]), []).append(v)
            if row.get("note"):
                notes.setdefault((row["job"], row["fs"], row["metric"]), []).append(row["note"])
    return vals, notes


def load_perfstat(res):
    """perfstat-FS-JOB.csv (perf stat -x,) + runs/perfstat.FS.JOB.json -> per-request figures."""
    out = {}
    for name in sorted(os.listdir(res)):
        if not (name.startswith("perfstat-") and name.endswith(".csv")):
            continue
        fs, job = name[len("perfstat-"):-len(".csv")].split("-", 1)
        ev, window = {}, None
        for line in open(os.path.join(res, name)):
            parts = line.strip().split(",")
            if len(parts) >= 3 and parts[0] and parts[0][0].isdigit():
                try:
                    ev[parts[2]] = float(parts[0])
                except ValueError:
                    pass
            elif parts[0] == "window_s":
                window = float(parts[1])
        try:
            fio = load_fio(os.path.join(res, "runs", "perfstat.%s.%s.json" % (fs, job)))
        except Exception:
            continue
        if not window or "task-clock" not in ev:
            continue
        reqs = fio["iops"] * window  # requests served during the perf stat window
        out[(fs, job)] = {
            "iops": fio["iops"],
            "cpu_us_per_req": ev["task-clock"] * 1000.0 / reqs if reqs else None,
            "cs_per_req": ev.get("context-switches", 0) / reqs if reqs else None,
            "cpu_util": ev["task-clock"] / 1000.0 / window,
        }
    return out


def tree_requests(res, files):
    """logs/stats-tree-r1-{0,cold,warm}.json -> {walk: {opcode: requests (or errors) per file}}."""
    out = {}
    try:
        prev = json.load(open(os.path.join(res, "logs", "stats-tree-r1-0.json")))
    except Exception:
        return out
    for w in ("cold", "warm"):
        try:
            cur = json.load(open(os.path.join(res, "logs", "stats-tree-r1-%s.json" % w)))
        except Exception:
            break
        d = {}
        for k, v in cur.items():
            if k.startswith("fuse_") and k not in ("fuse_requests", "fuse_errors") and isinstance(v, (int, float)):
                delta = v - prev.get(k, 0)
                if delta > 0:
                    d[k[len("fuse_"):]] = delta / float(files or 1)
        out[w] = d
        prev = cur
    return out


def main():
    res = sys.argv[1]
    meta = json.load(open(os.path.join(res, "meta.json")))
    for name in ("loadavg-start", "loadavg-end"):
        p = os.path.join(res, name)
        if os.path.exists(p):
            meta[name.replace("-", "_")] = open(p).read().strip()

    runs = []
    with open(os.path.join(res, "runs", "index.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            rec = {"fs": row["fs"], "job": row["job"], "placement": row["placement"],
                   "rep": int(row["rep"]), "load_before": row["load_before"],
                   "load_after": row["load_after"], "note": row.get("note", ""),
                   "raw": row["file"]}
            try:
                rec.update(load_fio(os.path.join(res, row["file"])))
            except Exception as e:  # a failed fio run stays in the record, without figures
                rec["error"] = str(e)
            runs.append(rec)

    groups = {}
    for r in runs:
        if "iops" in r:
            groups.setdefault((r["fs"], r["job"], r["placement"]), []).append(r)
    med = {}
    for key, rs in groups.items():
        iops = [r["iops"] for r in rs]
        bws = [r["bw_bytes"] for r in rs]
        lats = [r["lat_mean_us"] for r in rs if r["lat_mean_us"] is not None]
        m_iops = statistics.median(iops)
        med[key] = {
            "fs": key[0], "job": key[1], "placement": key[2], "reps": len(rs),
            "iops": m_iops, "bw_bytes": statistics.median(bws),
            "lat_mean_us": statistics.median(lats) if lats else None,
            "iops_per_rep": iops,
            "spread": (max(iops) - min(iops)) / m_iops if m_iops else None,
        }

    def metric(fs, job, pl):
        m = med.get((fs, job, pl))
        return None if m is None else m["iops"]

    def ratio(fs_a, job_a, fs_b, job_b, pl):
        a, b = metric(fs_a, job_a, pl), metric(fs_b, job_b, pl)
        return a / b if a is not None and b else None

    def fig(fs, job, pl):
        m = med.get((fs, job, pl))
        if m is None:
            return "–"
        return fmt_bw(m["bw_bytes"]) if uses_bw(job) else fmt_iops(m["iops"]) + " IOPS"

    jobs = [j for j in JOB_ORDER if any(k[1] == j for k in med)]
    placements = [p for p in PLACEMENT_ORDER if any(k[2] == p for k in med)]
    verdict_pl = "together" if "together" in placements else (placements[0] if placements else None)

    ratios = []
    for j in jobs:
        for pl in placements:
            for fs, peer in PEER.items():
                if (fs, j, pl) not in med:
                    continue
                ratios.append({
                    "fs": fs, "job": j, "placement": pl,
                    "vs_peer": peer, "peer_job": ref_job(j, peer),
                    "ratio_vs_peer": ratio(fs, j, peer, ref_job(j, peer), pl),
                    "ratio_vs_native": ratio(fs, j, "native", ref_job(j, "native"), pl),
                    "ratio_vs_null": ratio(fs, j, "null", j, pl),
                })

    extra, notes = load_extra(res)

    def emed(job, fs, m):
        v = extra.get((job, fs, m))
        if not v:
            return None
        if any(x is None for x in v):
            return "failed"
        return statistics.median(v)

    # ------------------------------------------------------------ targets
    # Each: id, text, threshold, direction (">=" ratio at least / "<=" at most / "<" below),
    # value in the verdict placement, figures, informational lines.
    targets = []

    def add(tid, text, thr, direction, value, figures, info=None, unit="x"):
        if value is None or value == "failed":
            status = "NOT MEASURED" if value is None else "FAIL"
            v = None
        else:
            v = value
            ok = v >= thr if direction == ">=" else (v <= thr if direction == "<=" else v < thr)
            status = "PASS" if ok else "FAIL"
        targets.append({"id": tid, "target": text, "threshold": thr, "direction": direction,
                        "unit": unit, "value": None if v is None else round(v, 4),
                        "status": status, "figures": figures, "info": info or []})

    def fio_target(tid, text, thr, fs, job, peer, peer_job=None, pl_only=None):
        peer_job = peer_job or job
        pls = [pl_only] if pl_only else placements
        vpl = pl_only or verdict_pl
        value, figures, info = None, "", []
        for pl in pls:
            r = ratio(fs, job, peer, peer_job, pl)
            f = "%s %s vs %s %s" % (fs, fig(fs, job, pl), peer, fig(peer, peer_job, pl))
            if pl == vpl:
                value, figures = r, "%s: %s" % (pl, f)
            elif r is not None:
                info.append("%s: %s = %s" % (pl, f, fmt_ratio(r)))
        add(tid, text, thr, ">=", value, figures, info)

    fio_target("F1", "cached 4k random direct reads: extentfs (pool) >= 0.95x null", 0.95,
               "pool", "randread4k-dio", "null")
    fio_target("F2", "cached 1M sequential direct reads: extentfs (pool) >= 0.95x null", 0.95,
               "pool", "seqread1m-dio", "null")
    fio_target("F3", "4k random direct writes: extentfs (pool) >= 0.9x null", 0.9,
               "pool", "randwrite4k-dio", "null")
    fio_target("K1", "cache=kernel 4k random direct reads >= 0.95x null", 0.95,
               "kernel", "randread4k-dio", "null")
    fio_target("K2", "cache=kernel buffered 1M writes >= 0.9x passthrough_ll cache=always,writeback", 0.9,
               "kernel", "seqwrite1m-buf", "ptwb")

    # small files
    t_ext, c_pt = emed("smallfiles", "extentfs-cto", "total_seconds"), emed("smallfiles", "passthrough_ll", "create_seconds")
    t_none = emed("smallfiles", "extentfs-none", "total_seconds")
    c_nat = emed("smallfiles", "native", "create_seconds")
    n_sf = meta.get("small_files", 5000)
    v = None if t_ext is None or c_pt is None else ("failed" if "failed" in (t_ext, c_pt) else t_ext / c_pt)
    info = []
    if isinstance(t_none, float) and isinstance(c_pt, float):
        info.append("coherence=none: %.3f s = %.2fx" % (t_none, t_none / c_pt))
    if isinstance(c_nat, float):
        info.append("native create %.3f s" % c_nat)
    add("S1", "%s files x 4 KiB created + `extentfs sync` <= 1.2x passthrough_ll's create time" % format(n_sf, ","),
        1.2, "<=", v, "extentfs (default, cto) %s s vs passthrough_ll %s s" % (fmt_s(t_ext), fmt_s(c_pt)), info)

    # tree walk
    n_tree = meta.get("tree_files", 50000)

    def walk_fig(fs, w):
        return emed("treewalk", fs, "%s_seconds" % w)

    def walk_parts(fs, w):
        ns = notes.get(("treewalk", fs, "%s_seconds" % w))
        return ns[0] if ns else ""
    ec, pc = walk_fig("extentfs", "cold"), walk_fig("passthrough_ll", "cold")
    ew, nw = walk_fig("extentfs", "warm"), walk_fig("native", "warm")
    pw, nc = walk_fig("passthrough_ll", "warm"), walk_fig("native", "cold")
    def wfmt(fs, w, v):
        if v == "failed":
            return "%s failed (%s)" % (fs, walk_parts(fs, w))
        return "%s %s s (%s)" % (fs, fmt_s(v), walk_parts(fs, w))

    def wratio(a, b):
        if a == "failed":
            return "failed"
        if b == "failed" or not a or not b:
            return None  # the peer failed: not measured
        return a / b
    add("S2", "walk of a %s-file tree (find, ls -lR, du), cold: extentfs <= 1.2x passthrough_ll" % format(n_tree, ","),
        1.2, "<=", wratio(ec, pc), "%s vs %s" % (wfmt("extentfs", "cold", ec), wfmt("passthrough_ll", "cold", pc)),
        ["native cold %s s" % fmt_s(nc)] if nc else [])
    add("S3", "the same walk warm (second walk): extentfs <= 2x the native directory", 2.0, "<=",
        wratio(ew, nw), "%s vs %s" % (wfmt("extentfs", "warm", ew), wfmt("native", "warm", nw)),
        ["passthrough_ll warm: %s" % wfmt("passthrough_ll", "warm", pw)] if pw else [])

    # network
    fio_target("N1", "network SOURCE, warm 4k direct reads: extentfs >= 10x sshfs", 10.0,
               "netpool", "net-randread4k-dio", "sshfs")
    fio_target("N2", "network SOURCE, warm 4k direct reads: extentfs >= 5x rclone --vfs-cache-mode full", 5.0,
               "netpool", "net-randread4k-dio", "rclone")
    for tid, job, what in (("N3", "net-randread4k-buf", "4k random"), ("N4", "net-seqread1m-buf", "1M sequential")):
        value, figures, info = None, "", []
        for pl in placements:
            peers = [(metric(p, job, pl), p) for p in ("sshfs", "rclone") if metric(p, job, pl) is not None]
            if not peers:
                continue
            best, bp = max(peers)
            for fs in ("netpool", "netkernel"):
                a = metric(fs, job, pl)
                if a is None:
                    continue
                f = "%s %s vs best peer %s %s (sshfs %s, rclone %s)" % (
                    fs, fig(fs, job, pl), bp, fig(bp, job, pl), fig("sshfs", job, pl), fig("rclone", job, pl))
                # judged on the better of the default mode (netpool) and the mode
                # docs/usage.md tells users to pick for hot re-reads (netkernel); the figures
                # name the one judged, the other is listed
                if pl == verdict_pl and (value is None or a / best > value):
                    if figures:
                        info.append(figures + " = " + fmt_ratio(value))
                    value, figures = a / best, "%s: %s" % (pl, f)
                else:
                    info.append("%s: %s = %s" % (pl, f, fmt_ratio(a / best)))
        add(tid, "network SOURCE, warm buffered %s re-reads: extentfs (default cache=pool, or cache=kernel as docs/usage.md advises for hot re-reads) >= 1.0x the better of sshfs and rclone" % what,
            1.0, ">=", value, figures, info)
    wt, wn = emed("net-write", "wtmp", "seconds"), emed("net-write", "wnet", "seconds")
    info = []
    a, b = emed("net-write", "wtmp-none", "seconds"), emed("net-write", "wnet-none", "seconds")
    if a and b:
        info.append("coherence=none: tmpfs SOURCE %.3f s, network SOURCE %.3f s = %.2fx" % (a, b, a / b))
    for p in ("sshfs", "rclone"):
        x = emed("net-write", p, "seconds")
        if x:
            info.append("%s itself: %.3f s" % (p, x))
    for fs in ("wtmp", "wnet"):
        x = extra.get(("net-write", fs, "seconds"))
        if x:
            info.append("%s per rep: %s s" % ("tmpfs SOURCE" if fs == "wtmp" else "network SOURCE",
                                              ", ".join("%.3f" % y for y in x if y is not None)))
    add("N5", "%s MiB written (dd 1M, close included) over the network SOURCE >= 0.9x the speed with a tmpfs SOURCE"
        % meta.get("write_mib", 256), 0.9, ">=", wt / wn if wt and wn else None,
        "tmpfs SOURCE %s s vs network SOURCE %s s" % ("%.3f" % wt if wt else "–", "%.3f" % wn if wn else "–"), info)

    # scale
    fio_target("C1", "2 fio jobs >= 1.6x one job, unpinned, cached 4k direct reads (pool)", 1.6,
               "pool", "randread4k-dio-2j", "pool", "randread4k-dio", pl_only="unpinned")
    fio_target("C2", "a file 2x the pool keeps >= 0.8x of the cached-file rate, 1M sequential direct reads (pool)", 0.8,
               "pool", "big-seqread1m-dio", "pool", "seqread1m-dio")
    m8 = emed("mount8g", "extentfs", "seconds")
    m8n = notes.get(("mount8g", "extentfs", "seconds"), [""])[0]
    add("C3", "mount with cache_size=8G takes under 1 s", 1.0, "<", m8,
        "%s s (median; %s)" % (fmt_s(m8), m8n or "?"), unit="s")

    perfstat = load_perfstat(res)
    out = {"meta": meta, "runs": runs, "medians": list(med.values()), "ratios": ratios,
           "extra": {"|".join(k): v for k, v in extra.items()},
           "perfstat": {"|".join(k): v for k, v in perfstat.items()},
           "verdict_placement": verdict_pl, "targets": targets}
    with open(os.path.join(res, "results.json"), "w") as f:
        json.dump(out, f, indent=1)

    # ------------------------------------------------------------ markdown
    md = []
    md.append("# extentfs benchmark, %s" % meta.get("date"))
    md.append("")
    md.append("- command: `%s`" % meta.get("command"))
    md.append("- machine: %s vCPUs, %s, kernel %s, %s RAM; %s, libfuse %s, sshfs %s, %s" % (
        meta.get("nproc"), meta.get("cpu_model"), meta.get("kernel"), meta.get("mem_total"), meta.get("fio"),
        meta.get("libfuse", "?"), meta.get("sshfs", "?"), meta.get("rclone", "?")))
    md.append("- binary %s (%s, built %s; repo HEAD at run time %s); mode %s: %s files (network %s), %s s runs after %s s ramp, %s repetition(s), medians shown" % (
        meta.get("extentfs_bin"), meta.get("extentfs_version", "?"), meta.get("extentfs_bin_mtime", "?"), meta.get("extentfs_commit"),
        meta.get("mode"), meta.get("size"), meta.get("net_size", "?"),
        meta.get("runtime_s"), meta.get("ramp_s"), meta.get("reps")))
    md.append("- extentfs cache_size %s MiB (%s MiB for the 2x-file jobs, %s MiB over the network); backing: tmpfs (cold jobs, small files, tree walk: a directory on the disk)" % (
        meta.get("cache_size_mib"), meta.get("small_cache_size_mib"), meta.get("net_cache_size_mib", "?")))
    md.append("- load average at start: %s; at end: %s (shared machine: other work may have run concurrently)" % (
        meta.get("loadavg_start"), meta.get("loadavg_end")))
    md.append("- placements: " + "; ".join(PLACEMENT_LABEL[p] for p in placements))
    md.append("")

    def cell(fs, job, pl):
        m = med.get((fs, job, pl))
        if m is None:
            return "–"
        return fmt_bw(m["bw_bytes"]) if uses_bw(job) else fmt_iops(m["iops"])

    main_jobs = [j for j in jobs if not j.startswith("net-")]
    for fs, peer in PEER.items():
        if not any((fs, j, pl) in med for j in main_jobs for pl in placements):
            continue
        md.append("## %s vs %s, null and native" % (FS_LABEL[fs], FS_LABEL[peer]))
        md.append("")
        hdr = ["job"]
        for pl in placements:
            hdr += ["%s: %s" % (pl, fs), "vs %s" % peer, "vs null", "vs native"]
        md.append("| " + " | ".join(hdr) + " |")
        md.append("|" + "---|" * len(hdr))
        for j in main_jobs:
            if not any((fs, j, pl) in med for pl in placements):
                continue
            row = [JOB_LABEL.get(j, j)]
            for pl in placements:
                row += [cell(fs, j, pl),
                        fmt_ratio(ratio(fs, j, peer, ref_job(j, peer), pl)),
                        fmt_ratio(ratio(fs, j, "null", j, pl)),
                        fmt_ratio(ratio(fs, j, "native", ref_job(j, "native"), pl))]
            md.append("| " + " | ".join(row) + " |")
        md.append("")
    md.append("IOPS for 4k jobs, bandwidth for 1M jobs; ratios of medians from this run, same placement. "
              "Rows `file 2x cache_size` compare with the runs of the same job on the same-size file; "
              "`pool dropped too` compares with the peers' cold runs.")
    md.append("")

    net_jobs = [j for j in jobs if j.startswith("net-")]
    if net_jobs:
        md.append("## Network SOURCE (sshfs over loopback to a private sshd), warm")
        md.append("")
        hdr = ["job", "placement"] + NET_FS + ["netpool / sshfs", "netpool / rclone", "netkernel / best peer"]
        md.append("| " + " | ".join(hdr) + " |")
        md.append("|" + "---|" * len(hdr))
        for j in net_jobs:
            for pl in placements:
                if not any((fs, j, pl) in med for fs in NET_FS):
                    continue
                best = max([metric(p, j, pl) or 0 for p in ("sshfs", "rclone")])
                nk = metric("netkernel", j, pl)
                row = [JOB_LABEL.get(j, j), pl] + [cell(fs, j, pl) for fs in NET_FS] + [
                    fmt_ratio(ratio("netpool", j, "sshfs", j, pl)), fmt_ratio(ratio("netpool", j, "rclone", j, pl)),
                    fmt_ratio(nk / best if nk and best else None)]
                md.append("| " + " | ".join(row) + " |")
        md.append("")

    if extra:
        md.append("## Other jobs (seconds, median of the repetitions; each repetition listed)")
        md.append("")
        md.append("| job | fs | metric | median | each |")
        md.append("|---|---|---|---|---|")
        for (job, fs, m), vs in extra.items():
            mv = emed(job, fs, m)
            md.append("| %s | %s | %s | %s | %s |" % (
                job, fs, m, "%.4f" % mv if isinstance(mv, float) else mv,
                ", ".join("failed" if v is None else "%.4f" % v for v in vs)))
        md.append("")
        if notes:
            for (job, fs, m), ns in notes.items():
                if job == "treewalk":
                    md.append("- %s %s %s: %s" % (job, fs, m, "; ".join(ns)))
            md.append("")

    walk_counts = tree_requests(res, meta.get("tree_files"))
    if walk_counts:
        md.append("## Tree walk: FUSE requests extentfs received per file of the tree (first repetition, from `extentfs stats`)")
        md.append("")
        ops = sorted({k for w in walk_counts.values() for k in w})
        md.append("| walk | " + " | ".join(ops) + " |")
        md.append("|---|" + "---|" * len(ops))
        for w in ("cold", "warm"):
            if w in walk_counts:
                md.append("| %s | " % w + " | ".join("%.2f" % walk_counts[w].get(k, 0) for k in ops) + " |")
        md.append("")

    if perfstat:
        md.append("## Daemon CPU per request (perf stat on the daemon, fio and daemon on cpu 0)")
        md.append("")
        md.append("| job | fs | IOPS | daemon CPU µs / request | context switches / request | daemon CPU use |")
        md.append("|---|---|---|---|---|---|")
        for (fs, job), v in sorted(perfstat.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            md.append("| %s | %s | %s | %.2f | %.2f | %.0f%% |" % (
                JOB_LABEL.get(job, job), fs, fmt_iops(v["iops"]), v["cpu_us_per_req"] or 0,
                v["cs_per_req"] or 0, 100 * v["cpu_util"]))
        md.append("")

    md.append("## All fio figures (median; mean latency in µs; ± = max-min spread over repetitions)")
    for pl in placements:
        md.append("")
        md.append("### %s" % PLACEMENT_LABEL[pl])
        md.append("")
        fss = [fs for fs in MAIN_FS + NET_FS if any(k[0] == fs and k[2] == pl for k in med)]
        md.append("| job | " + " | ".join(fss) + " |")
        md.append("|---|" + "---|" * len(fss))
        for j in jobs:
            row = [JOB_LABEL.get(j, j)]
            for fs in fss:
                m = med.get((fs, j, pl))
                if m is None:
                    row.append("–")
                    continue
                s = "%s IOPS, %s, %.1f µs" % (fmt_iops(m["iops"]), fmt_bw(m["bw_bytes"]), m["lat_mean_us"] or 0)
                if m["reps"] > 1 and m["spread"] is not None:
                    s += " ±%.0f%%" % (100 * m["spread"] / 2)
                row.append(s)
            md.append("| " + " | ".join(row) + " |")
    md.append("")

    for name in sorted(os.listdir(res)):
        if name.startswith("perf-") and name.endswith("-self.txt") and os.path.getsize(os.path.join(res, name)):
            job = name[len("perf-"):-len("-self.txt")]
            md.append("## perf: extentfs (pool) daemon during %s, together (self time, top symbols)" % JOB_LABEL.get(job, job))
            md.append("")
            md.append("```")
            md += [l.rstrip() for l in open(os.path.join(res, name)).read().splitlines()[:20]]
            md.append("```")
            md.append("")

    md += baseline_section(med, jobs, placements, meta)

    md.append("## Targets (judged %s; C1 unpinned)" % (PLACEMENT_LABEL.get(verdict_pl, verdict_pl) if verdict_pl else "–"))
    md.append("")
    md.append("| | target | measured | needed | verdict | figures |")
    md.append("|---|---|---|---|---|---|")
    for t in targets:
        if t["value"] is None:
            v = "–"
        elif t["unit"] == "s":
            v = "%.3f s" % t["value"]
        else:
            v = "%.2fx" % t["value"]
        need = "%s %g%s" % (t["direction"], t["threshold"], " s" if t["unit"] == "s" else "x")
        md.append("| %s | %s | %s | %s | **%s** | %s |" % (t["id"], t["target"], v, need, t["status"], t["figures"]))
    md.append("")
    for t in targets:
        for line in t["info"]:
            md.append("- %s (informational): %s" % (t["id"], line))
    md.append("")
    counts = {}
    for t in targets:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    md.append("Targets: " + ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items())))
    md.append("")

    text = "\n".join(md) + "\n"
    with open(os.path.join(res, "results.md"), "w") as f:
        f.write(text)
    print(text)
    print("results: %s/results.json, %s/results.md" % (res, res))
    chart = draw_chart(res, targets, meta)
    if chart:
        print("chart: %s" % chart)


def slower_beyond_spread(new, base):
    """True when the binary under test is slower than the baseline by more than either one's
    run-to-run spread (max-min over the repetitions, relative to the median); None without a
    spread (one repetition)."""
    if new["reps"] < 2 or base["reps"] < 2:
        return None
    spread = max(new["spread"] or 0.0, base["spread"] or 0.0)
    return new["iops"] < base["iops"] * (1.0 - spread)


def baseline_section(med, jobs, placements, meta):
    """The binary under test against --baseline BIN, job by job (lines for results.md)."""
    if not any(k[0] in BASELINE.values() for k in med):
        return []
    md = ["## Against the baseline binary (%s)" % meta.get("baseline_version", "?"), "",
          "Each job ran the two binaries one after the other, per repetition; `spread` is the larger "
          "max-min spread of the two over the repetitions.", "",
          "| job | placement | mode | this binary | baseline | ratio | spread | slower beyond spread |",
          "|---|---|---|---|---|---|---|---|"]
    slower = 0
    for j in jobs:
        for pl in placements:
            for fs, base in BASELINE.items():
                a, b = med.get((fs, j, pl)), med.get((base, j, pl))
                if a is None or b is None:
                    continue
                fmt = (lambda m: fmt_bw(m["bw_bytes"])) if uses_bw(j) else (lambda m: fmt_iops(m["iops"]))
                verdict = slower_beyond_spread(a, b)
                slower += verdict is True
                spread = max(a["spread"] or 0.0, b["spread"] or 0.0)
                md.append("| %s | %s | %s | %s | %s | %.2fx | %s | %s |" % (
                    JOB_LABEL.get(j, j), pl, fs, fmt(a), fmt(b), a["iops"] / b["iops"] if b["iops"] else 0,
                    "%.0f%%" % (100 * spread) if a["reps"] > 1 else "–",
                    {None: "– (one repetition)", True: "**yes**", False: "no"}[verdict]))
    md += ["", "Jobs slower than the baseline beyond the spread: %d" % slower, ""]
    return md


def draw_chart(res, targets, meta):
    """RESULTS/ratios.png: every target's measured value over what it needs (> 1: met), log
    scale (matplotlib from Debian's python3-matplotlib; skipped with a note when missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("chart: skipped (no matplotlib; apt-get install python3-matplotlib)")
        return None
    rows = [t for t in targets if t["value"]]
    if not rows:
        return None
    xs = []
    for t in rows:
        xs.append(t["value"] / t["threshold"] if t["direction"] == ">=" else t["threshold"] / t["value"])
    fig, ax = plt.subplots(figsize=(10.5, 0.42 * len(rows) + 1.6))
    lo, hi = min(xs + [1.0]) * 0.6, max(xs + [1.0]) * 1.8
    colors = ["#2ca02c" if t["status"] == "PASS" else "#d62728" for t in rows]
    ys = list(range(len(rows)))
    ax.barh(ys, [x - lo for x in xs], left=lo, height=0.6, color=colors)
    for y, x, t in zip(ys, xs, rows):
        label = ("%.3f s" % t["value"]) if t["unit"] == "s" else ("%.2fx" % t["value"])
        ax.text(x, y, " %s (needs %s %g%s)" % (label, t["direction"], t["threshold"], " s" if t["unit"] == "s" else "x"),
                va="center", fontsize="x-small")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi * 2.5)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if lo <= t <= hi * 2.5])
    ax.set_yticks(ys)
    ax.set_yticklabels(["%s %s" % (t["id"], t["target"][:62] + ("…" if len(t["target"]) > 62 else "")) for t in rows],
                       fontsize="x-small")
    ax.invert_yaxis()
    ax.set_xlabel("measured / needed (log scale; >= 1: target met)")
    ax.set_title("extentfs targets, one run (%s, %s)" % (meta.get("date", ""), meta.get("mode", "")), fontsize="medium")
    fig.tight_layout()
    path = os.path.join(res, "ratios.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
