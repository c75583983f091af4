#!/usr/bin/env python3
"""Summarize a scripts/bench.sh results directory: results.json, results.md, targets.

    scripts/bench-report.py RESULTS_DIR

Reads RESULTS_DIR/meta.json, runs/index.tsv and the raw fio JSON of every run. Ratios are
always taken between figures of the same run directory, job and placement (medians over the
repetitions)."""
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
}
PEER = {"pool": "ptnever", "kernel": "ptalways"}
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


def fmt_ratio(x):
    return "–" if x is None else "%.2fx" % x


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

    jobs = [j for j in JOB_ORDER if any(k[1] == j for k in med)]
    placements = [p for p in PLACEMENT_ORDER if any(k[2] == p for k in med)]

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
                })

    # ------------------------------------------------------------ targets
    targets = []

    def check(tid, desc, items, threshold, required_placements=None, verdict_placements=None):
        lines, ok, missing = [], True, False
        for (label, pl, value, detail) in items:
            if value is None:
                lines.append({"check": label, "placement": pl, "value": None, "status": "NOT MEASURED", "detail": detail})
                missing = True
                continue
            passed = value >= threshold
            counts = verdict_placements is None or pl in verdict_placements
            lines.append({"check": label, "placement": pl, "value": round(value, 3),
                          "status": ("PASS" if passed else "FAIL") + ("" if counts else " (informational)"),
                          "detail": detail})
            if counts and not passed:
                ok = False
        have = {l["placement"] for l in lines if l["value"] is not None}
        for pl in (required_placements or []):
            if pl not in have:
                missing = True
                lines.append({"check": "(required placement)", "placement": pl, "value": None,
                              "status": "NOT MEASURED", "detail": "run with --placements including %s" % pl})
        status = "FAIL" if not ok else ("INCOMPLETE" if missing else "PASS")
        if not lines:
            status = "NOT MEASURED"
        targets.append({"id": tid, "target": desc, "threshold": threshold, "status": status, "checks": lines})

    def peer_items(job, fs="pool"):
        peer = PEER[fs]
        items = []
        for pl in placements:
            a, b = metric(fs, job, pl), metric(peer, ref_job(job, peer), pl)
            if a is None and b is None:
                continue
            v = a / b if a is not None and b else None
            detail = "%s %s vs %s %s" % (
                fs, fmt_bw(med[(fs, job, pl)]["bw_bytes"]) if (uses_bw(job) and a is not None) else fmt_iops(a),
                peer, fmt_bw(med[(peer, ref_job(job, peer), pl)]["bw_bytes"]) if (uses_bw(job) and b is not None) else fmt_iops(b))
            items.append((job, pl, v, detail))
        return items

    check("T1", "rand read 4k --direct=1, cached: extentfs(pool) >= 1.2x passthrough_ll cache=never, pinned and unpinned",
          peer_items("randread4k-dio"), 1.2, required_placements=["together", "apart", "unpinned"])
    check("T2", "seq read 1M --direct=1, cached: extentfs(pool) >= 1.2x passthrough_ll cache=never",
          peer_items("seqread1m-dio"), 1.2)
    items = []
    for j in ("seqwrite1m-buf", "seqwrite1m-dio", "randwrite4k-buf", "randwrite4k-dio"):
        items += peer_items(j)
    check("T3", "seq write 1M and rand write 4k: extentfs(pool) >= 1.5x passthrough_ll cache=never",
          items, 1.5)
    check("T4", "cold cache rand read 4k --direct=1 (backing on disk, evicted from the page cache; "
          "file in extentfs's pool): extentfs(pool) >= 5x passthrough_ll cache=never",
          peer_items("cold-randread4k-dio"), 5.0)
    items = []
    for pl in placements:
        a, b = metric("pool", "randread4k-dio-2j", pl), metric("pool", "randread4k-dio", pl)
        if a is None and b is None:
            continue
        items.append(("pool 2 jobs / 1 job", pl, a / b if a is not None and b else None,
                      "%s vs %s IOPS" % (fmt_iops(a), fmt_iops(b))))
    check("T5", "rand read 4k --direct=1 cached on extentfs(pool): 2 jobs >= 1.5x 1 job "
          "(judged unpinned: the pinned placements confine fio to cpu 0)",
          items, 1.5, required_placements=["unpinned"], verdict_placements=["unpinned"])

    out = {"meta": meta, "runs": runs, "medians": list(med.values()), "ratios": ratios, "targets": targets}
    with open(os.path.join(res, "results.json"), "w") as f:
        json.dump(out, f, indent=1)

    # ------------------------------------------------------------ markdown
    md = []
    md.append("# extentfs benchmark, %s" % meta.get("date"))
    md.append("")
    md.append("- command: `%s`" % meta.get("command"))
    md.append("- machine: %s vCPUs, %s, kernel %s, %s RAM; %s" % (
        meta.get("nproc"), meta.get("cpu_model"), meta.get("kernel"), meta.get("mem_total"), meta.get("fio")))
    md.append("- binary %s (built %s; repo HEAD at run time %s); mode %s: %s files, %s s runs after %s s ramp, %s repetition(s), medians shown" % (
        meta.get("extentfs_bin"), meta.get("extentfs_bin_mtime", "?"), meta.get("extentfs_commit"), meta.get("mode"), meta.get("size"),
        meta.get("runtime_s"), meta.get("ramp_s"), meta.get("reps")))
    md.append("- extentfs cache_size %s MiB (%s MiB for the 2x-file jobs); backing: tmpfs (cold jobs: a directory on the disk)" % (
        meta.get("cache_size_mib"), meta.get("small_cache_size_mib")))
    md.append("- load average at start: %s; at end: %s (shared machine: other work may have run concurrently)" % (
        meta.get("loadavg_start"), meta.get("loadavg_end")))
    md.append("- placements: " + "; ".join(PLACEMENT_LABEL[p] for p in placements))
    md.append("")

    md.append("## Targets")
    md.append("")
    for t in targets:
        md.append("- **%s %s**: %s" % (t["id"], t["status"], t["target"]))
        for c in t["checks"]:
            v = "–" if c["value"] is None else "%.2fx" % c["value"]
            md.append("  - %s, %s: %s %s (%s)" % (c["check"], c["placement"], v, c["status"], c["detail"]))
    md.append("")

    def cell(fs, job, pl):
        m = med.get((fs, job, pl))
        if m is None:
            return "–"
        return fmt_bw(m["bw_bytes"]) if uses_bw(job) else fmt_iops(m["iops"])

    for fs, peer in PEER.items():
        md.append("## %s vs %s (and vs native)" % (FS_LABEL[fs], FS_LABEL[peer]))
        md.append("")
        hdr = ["job"]
        for pl in placements:
            hdr += ["%s: %s" % (pl, fs), "vs %s" % peer, "vs native"]
        md.append("| " + " | ".join(hdr) + " |")
        md.append("|" + "---|" * len(hdr))
        for j in jobs:
            if not any((fs, j, pl) in med for pl in placements):
                continue
            row = [JOB_LABEL.get(j, j)]
            for pl in placements:
                row += [cell(fs, j, pl),
                        fmt_ratio(ratio(fs, j, peer, ref_job(j, peer), pl)),
                        fmt_ratio(ratio(fs, j, "native", ref_job(j, "native"), pl))]
            md.append("| " + " | ".join(row) + " |")
        md.append("")
    md.append("IOPS for 4k jobs, bandwidth for 1M jobs; ratios of medians from this run, same placement. "
              "Rows `file 2x cache_size` compare with the peers' and native's runs of the same job on "
              "the same-size file; `pool dropped too` compares with the peers' cold runs.")
    md.append("")

    md.append("## All figures (median; mean latency in µs; ± = max-min spread over repetitions)")
    for pl in placements:
        md.append("")
        md.append("### %s" % PLACEMENT_LABEL[pl])
        md.append("")
        fss = ["native", "pool", "kernel", "ptnever", "ptalways"]
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

    for pl in ("together", "apart"):
        p = os.path.join(res, "perf-%s-self.txt" % pl)
        if os.path.exists(p) and os.path.getsize(p):
            md.append("## perf: extentfs(pool) daemon during rand read 4k direct, %s (self time, top symbols)" % PLACEMENT_LABEL[pl])
            md.append("")
            md.append("```")
            md += [l.rstrip() for l in open(p).read().splitlines()[:20]]
            md.append("```")
            md.append("")

    text = "\n".join(md) + "\n"
    with open(os.path.join(res, "results.md"), "w") as f:
        f.write(text)
    print(text)
    print("results: %s/results.json, %s/results.md" % (res, res))
    for t in targets:
        print("%s %s" % (t["id"], t["status"]))
    chart = draw_chart(res, ratios, meta)
    if chart:
        print("chart: %s" % chart)


def draw_chart(res, ratios, meta):
    """RESULTS/ratios.png: extentfs / peer per job, one panel per placement (matplotlib from
    Debian's python3-matplotlib; skipped with a note when it is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("chart: skipped (no matplotlib; apt-get install python3-matplotlib)")
        return None
    placements = [p for p in PLACEMENT_ORDER if any(r["placement"] == p for r in ratios)]
    jobs = [j for j in JOB_ORDER if any(r["job"] == j for r in ratios)]
    if not placements or not jobs:
        return None
    fig, axes = plt.subplots(1, len(placements), figsize=(max(9.0, 5.5 * len(placements)), 0.45 * len(jobs) + 1.8),
                             sharey=True, squeeze=False)
    colors = {"pool": "#1f77b4", "kernel": "#ff7f0e"}
    values = [r["ratio_vs_peer"] for r in ratios if r["ratio_vs_peer"]]
    lo = min(values + [1.0]) * 0.7
    hi = max(values + [1.0]) * 1.4
    for ax, pl in zip(axes[0], placements):
        for k, fs in enumerate(["pool", "kernel"]):
            ys, xs = [], []
            for i, j in enumerate(jobs):
                for r in ratios:
                    if r["job"] == j and r["placement"] == pl and r["fs"] == fs and r["ratio_vs_peer"]:
                        ys.append(i + (k - 0.5) * 0.38)
                        xs.append(r["ratio_vs_peer"])
            # Bars grow from the left edge of the log axis, not from 0.
            ax.barh(ys, [x - lo for x in xs], left=lo, height=0.36, color=colors[fs],
                    label="%s / %s" % (FS_LABEL[fs], FS_LABEL[PEER[fs]]) if pl == placements[0] else None)
            for y, x in zip(ys, xs):
                ax.text(x, y, " %.2fx" % x, va="center", fontsize="x-small")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([t for t in (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if lo <= t <= hi])
        ax.set_title(PLACEMENT_LABEL[pl])
        ax.set_xlabel("ratio to the peer (log scale; > 1: extentfs faster)")
    axes[0][0].set_yticks(range(len(jobs)))
    axes[0][0].set_yticklabels([JOB_LABEL.get(j, j) for j in jobs])
    axes[0][0].invert_yaxis()
    fig.legend(loc="lower center", ncol=2, fontsize="small")
    fig.suptitle("extentfs vs passthrough_ll, same run (%s)" % meta.get("started", meta.get("date", "")),
                 fontsize="medium")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = os.path.join(res, "ratios.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
