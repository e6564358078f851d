#!/usr/bin/env python3
"""Tables for loadtest/k6/run.sh and the summary of loadtest/compare.sh.

  report.py row RESULTS NAME      one run: reads RESULTS/NAME.json (k6's handleSummary),
                                  NAME.meta.json (simulator counters, settings) and the
                                  gateways' /metrics scrapes; writes RESULTS/NAME.row.json
                                  and prints that run's row (progress)
  report.py tables RESULTS        every NAME.row.json in RESULTS: one markdown table per
                                  scenario, one row per target and round, the mesgate/nginx
                                  ratios; writes RESULTS/<scenario>.md, prints them all
  report.py compare HIT_JSON K6_RESULTS
                                  compare.sh's one summary table (one row per target)

Python 3 standard library only.
"""
import glob
import json
import os
import re
import statistics
import sys

SCENARIOS = ["shift_start", "live_shift", "redis_outage", "two_instances", "two_instances_outage"]
PHASES = ["before", "during", "after"]
KINDS = ["list_p1", "list_p2", "detail", "counts"]
XCACHE = {
    "mesgate": ["HIT-L1", "HIT-L2", "HIT-INDEX", "MISS", "STALE", "BYPASS"],
    "mesgate-cluster": ["HIT-L1", "HIT-L2", "HIT-INDEX", "MISS", "STALE", "BYPASS"],
    "nginx": ["nginx-HIT", "nginx-MISS", "nginx-EXPIRED", "nginx-UPDATING", "nginx-STALE",
              "nginx-REVALIDATED"],
}


# ---------------------------------------------------------------- formatting

def f(x, big=10):
    if x is None:
        return "-"
    return f"{x:.1f}" if abs(x) >= big else f"{x:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def md_row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(cols, rows):
    out = [md_row(cols), "|" + "---|" * len(cols)]
    out += [md_row(r) for r in rows]
    return "\n".join(out)


def bold(n, ok):
    return f"**{n}**" if ok else f"**{n} (target missed)**"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- one run

def row(results, name):
    d = json.load(open(f"{results}/{name}.json"))
    meta = json.load(open(f"{results}/{name}.meta.json"))
    before, after = meta["before"], meta["after"]
    M = d["metrics"]
    secs = d["state"]["testRunDurationMs"] / 1000.0

    def v(metric, key="count"):
        x = M.get(metric)
        return None if not x else x["values"].get(key)

    def cnt(metric):
        return int(v(metric) or 0)

    def delta(k):
        return max(0, int(after.get(k, 0)) - int(before.get(k, 0)))

    target = meta["target"]
    xc = {t: cnt(f"op_reads{{xcache:{t}}}") for t in XCACHE["mesgate"] + XCACHE["nginx"]}
    shown = [t for t in XCACHE.get(target, []) if xc[t] or t in ("HIT-L1", "HIT-L2", "MISS", "STALE",
                                                                  "nginx-HIT", "nginx-MISS")]
    r = {
        "name": name, "scenario": meta["scenario"], "target": target, "label": meta["label"],
        "round": int(meta["round"]), "title": meta.get("title", ""), "secs": secs,
        "reads_per_s": cnt("op_reads") / secs if secs else None,
        "failed": cnt("failed_requests"),
        "xcache": " / ".join(f"{t.replace('nginx-', '')} {xc[t]}" for t in shown),
        "sim": {k: delta(k) for k in ("list", "detail", "counts")},
        "stale_lines": 0, "cross_stale_lines": 0, "b_stale_lines": 0,
    }
    try:
        for line in open(f"{results}/{name}.k6.log", errors="replace"):
            if line.startswith("STALE "):
                r["stale_lines"] += 1
            elif line.startswith("CROSS-STALE "):
                r["cross_stale_lines"] += 1
            elif line.startswith("B-STALE "):
                r["b_stale_lines"] += 1
    except OSError:
        pass

    if meta["scenario"] == "shift_start":
        r.update({
            "vus": int(meta["vus"]), "duration": meta["duration"],
            "opened": cnt("dashboards_opened"),
            "cold_lists": int(v("upstream_list_at_open", "max") or 0),
            "cold_counts": int(v("upstream_counts_at_open", "max") or 0),
            "distinct_pages": 2,
            "open": [v("dashboard_open_ms", k) for k in ("med", "p(99)", "max")],
            "cold": [v("read_ms{phase:cold}", k) for k in ("med", "p(99)")],
            "poll": [v("read_ms{phase:poll}", k) for k in ("med", "p(99)")],
            "read_p50": v("read_ms", "med"), "read_p99": v("read_ms", "p(99)"),
            "p99_kind": {k: v(f"read_ms{{kind:{k}}}", "p(99)") for k in ("list_p1", "counts")},
            "upstream_list_per_s": delta("list") / secs if secs else None,
        })
    else:
        truth = cnt("truth_list_reads")
        lists = max(0, delta("list") - truth)
        r.update({
            "read_p50": v("op_read_ms", "med"), "read_p99": v("op_read_ms", "p(99)"),
            "p99_kind": {k: v(f"op_read_ms{{kind:{k}}}", "p(99)") for k in KINDS},
            "changes": cnt("writes_ok{kind:change}"), "creates": cnt("writes_ok{kind:create}"),
            "conflicts": cnt("write_conflicts"), "dropped": cnt("dropped_iterations"),
            "checks": cnt("own_checks"), "stale": cnt("stale_reads"),
            "superseded": cnt("checks_superseded"), "stale_served": cnt("stale_if_error_served"),
            "upstream_list_per_s": lists / secs if secs else None,
            "upstream_detail_per_s": delta("detail") / secs if secs else None,
            "upstream_counts_per_s": delta("counts") / secs if secs else None,
        })
    if meta["scenario"] == "redis_outage":
        phases = []
        for ph in ("before", "during", "after"):
            t = f"op_read_ms{{phase:{ph}}}"
            phases.append({
                "phase": ph, "reads": cnt(f"op_reads{{phase:{ph}}}"),
                "p50": v(t, "med"), "p99": v(t, "p(99)"), "max": v(t, "max"),
                "list_p1_p99": v(f"op_read_ms{{phase:{ph},kind:list_p1}}", "p(99)"),
                "writes": cnt(f"writes_ok{{phase:{ph}}}"),
                "write_p99": v(f"write_ms{{phase:{ph}}}", "p(99)"),
                "write_max": v(f"write_ms{{phase:{ph}}}", "max"),
                "failed": cnt(f"failed_requests{{phase:{ph}}}"),
                "checks": cnt(f"own_checks{{phase:{ph}}}"),
                "stale": cnt(f"stale_reads{{phase:{ph}}}"),
                "stale_served": cnt(f"stale_if_error_served{{phase:{ph}}}"),
            })
        r["phases"] = phases
        r["outage"] = meta.get("outage", "")
        if target != "nginx":
            r["counters"] = outage_counters(f"{results}/{name}.gw-a.metrics")
        else:
            r["counters"] = ("nginx does not use Redis: the same load and the same redis-server "
                             "stop, for comparison only")
    if meta["scenario"] in ("two_instances", "two_instances_outage"):
        c, cs = "cross_converge_ms", "cross_converge_sent_ms"
        r["cross"] = {
            "checks": cnt("cross_checks"), "converged": int(v(c) or 0),
            "conv": [v(c, k) for k in ("med", "p(95)", "p(99)", "max")],
            "sent": [v(cs, k) for k in ("med", "p(99)", "max")],
            "stale_beyond": cnt("cross_stale_beyond_2s"), "stale_polls": cnt("cross_stale_polls"),
            "timeout_ms": meta.get("cross_timeout_ms", "2000"),
            "bus": bus_latency(f"{results}/{name}.gw-b.metrics") if target != "nginx"
            else "n/a (nginx has no invalidation bus)",
            "p99_a": v("op_read_ms{inst:A}", "p(99)"), "p99_b": v("op_read_ms{inst:B}", "p(99)"),
        }
    if meta["scenario"] == "two_instances_outage":
        r["outage"] = meta.get("outage", "")
        r["b_stale_after_ms"] = meta.get("b_stale_after_ms", "1500")
        marks = {"t0": json.loads(meta.get("sim_t0") or "{}"), "down": json.loads(meta.get("sim_down") or "{}"),
                 "back": json.loads(meta.get("sim_back") or "{}"), "end": after}
        ms = {"t0": 0, "down": int(meta.get("ms_down", 0)), "back": int(meta.get("ms_back", 0)),
              "end": int(meta.get("ms_end", 0))}
        spans = {"before": ("t0", "down"), "during": ("down", "back"), "after": ("back", "end")}
        phases = []
        for ph in PHASES:
            a, b = spans[ph]
            dt = (ms[b] - ms[a]) / 1000.0

            def d(k):
                return max(0, int(marks[b].get(k, 0)) - int(marks[a].get(k, 0)))
            lists = max(0, d("list") - cnt(f"truth_list_reads{{phase:{ph}}}"))
            phases.append({
                "phase": ph, "secs": dt,
                "b_checks": cnt(f"b_checks{{phase:{ph}}}"), "b_late": cnt(f"b_late_reads{{phase:{ph}}}"),
                "b_stale": cnt(f"b_stale_reads{{phase:{ph}}}"),
                "cross_checks": cnt(f"cross_checks{{phase:{ph}}}"),
                "cross_beyond": cnt(f"cross_stale_beyond_2s{{phase:{ph}}}"),
                "checks": cnt(f"own_checks{{phase:{ph}}}"), "stale": cnt(f"stale_reads{{phase:{ph}}}"),
                "failed": cnt(f"failed_requests{{phase:{ph}}}"), "reads": cnt(f"op_reads{{phase:{ph}}}"),
                "p99_b": v(f"op_read_ms{{phase:{ph},inst:B}}", "p(99)"),
                "write_p99": v(f"write_ms{{phase:{ph}}}", "p(99)"),
                "list_per_s": lists / dt if dt > 0 else None,
                "detail_per_s": d("detail") / dt if dt > 0 else None,
                "counts_per_s": d("counts") / dt if dt > 0 else None,
            })
        r["phases"] = phases
        r["b_total"] = {"checks": cnt("b_checks"), "late": cnt("b_late_reads"), "stale": cnt("b_stale_reads")}
        r["cut_offs"] = {
            "b_at_resume": cut_offs(f"{results}/{name}.gw-b.outage.metrics"),
            "b_end": cut_offs(f"{results}/{name}.gw-b.metrics"),
            "a_end": cut_offs(f"{results}/{name}.gw-a.metrics"),
        }
        r["bus_log"] = bus_log(f"{results}/{name}.bus.log")
    json.dump(r, open(f"{results}/{name}.row.json", "w"), indent=1)
    print(scenario_tables([r]))


def cut_offs(path):
    """mesgate_bus_cut_offs_total (episodes) and mesgate_bus_cut_off (now) in a scrape."""
    t = metric_text(path)
    if t is None:
        return "not scraped"
    n = re.search(r"^mesgate_bus_cut_offs(?:_total)? (\S+)$", t, re.M)
    g = re.search(r"^mesgate_bus_cut_off (\S+)$", t, re.M)
    return (f"{int(float(n.group(1))) if n else '-'} episode(s), "
            f"cut off now {int(float(g.group(1))) if g else '-'}")


def bus_log(path):
    """run.sh's bus watcher: '+MS PORT STATE' lines, as 'PORT: STATE at +S s, ...'."""
    try:
        lines = [ln.split() for ln in open(path) if ln.strip()]
    except OSError:
        return "-"
    by = {}
    for ms, port, st in (x for x in lines if len(x) == 3):
        by.setdefault(port, []).append(f"{st} at +{int(ms.lstrip('+')) / 1000:.1f} s")
    return "; ".join(f"admin :{p}: " + ", ".join(v) for p, v in by.items()) or "-"


def metric_text(path):
    try:
        return open(path).read()
    except OSError:
        return None


def outage_counters(path):
    t = metric_text(path)
    if t is None:
        return "mesgate A's /metrics: not scraped"

    def g(name):
        m = re.search(r"^" + re.escape(name) + r" (\S+)$", t, re.M)
        return "-" if not m else str(int(float(m.group(1))))
    return ("mesgate A's counters at the end: redis errors failed " + g('mesgate_redis_errors_total{kind="failed"}')
            + ", skipped by the breaker " + g('mesgate_redis_errors_total{kind="skipped"}')
            + "; invalidations queued " + g('mesgate_invalidations_total{reason="queued"}')
            + ", retried " + g('mesgate_invalidations_total{reason="retried"}')
            + ", L1 flushed on resubscribe " + g('mesgate_invalidations_total{reason="resubscribe"}')
            + "; breaker open now " + g("mesgate_redis_breaker_open"))


def bus_latency(path):
    t = metric_text(path)
    try:
        s = float(re.search(r"^mesgate_bus_latency_seconds_sum (\S+)", t, re.M).group(1))
        n = float(re.search(r"^mesgate_bus_latency_seconds_count (\S+)", t, re.M).group(1))
        return f"{1000 * s / n:.2f} ms over {int(n)}" if n else "no messages"
    except Exception:
        return "-"


# ---------------------------------------------------------------- tables

def order(rows):
    tord = {"mesgate": 0, "mesgate-cluster": 1, "nginx": 2}
    return sorted(rows, key=lambda r: (r["round"], tord.get(r["target"], 9), r["name"]))


def who(r, n_rounds):
    return r["label"] + (f", round {r['round']}" if n_rounds > 1 else "")


def ratio_line(rows):
    """mesgate/nginx from the medians over rounds: read p99 (all and per kind), upstream
    list req/s."""
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    if "mesgate" not in by or "nginx" not in by:
        return None
    m, n = by["mesgate"], by["nginx"]

    def mr(key, sub=None):
        get = (lambda r: r[key]) if sub is None else (lambda r: r[key].get(sub))
        return ratio(med(get(r) for r in m), med(get(r) for r in n))
    kinds = [k for k in KINDS if k in m[0]["p99_kind"]]
    per_kind = ", ".join(f"{k} {mr('p99_kind', k)}" for k in kinds)
    rounds = len({r["round"] for r in rows})
    over = f"medians over {rounds} rounds" if rounds > 1 else "one round"
    return (f"**mesgate / nginx** ({over}): read p99 **{mr('read_p99')}** ({per_kind}); "
            f"upstream list req/s **{mr('upstream_list_per_s')}**")


def scenario_tables(rows):
    rows = order(rows)
    sc = rows[0]["scenario"]
    nr = len({r["round"] for r in rows})
    out = []
    if sc == "shift_start":
        r0 = rows[0]
        out.append(f"### shift_start: {r0['vus']} operators open the dashboard at once on a cold cache, "
                   f"then poll it for {r0['duration']}")
        out.append("")
        cols = ["target", "dashboards opened", "upstream list req, cold start (target ≤ 2)",
                "upstream counts req, cold start", "upstream list / counts req, whole run",
                "upstream list req/s", "open p50 / p99 / max ms", "cold read p50 / p99 ms",
                "poll read p50 / p99 ms", "read p99 ms", "read p99 ms: list p1 / counts",
                "reads/s", "failed requests", "cache answers"]
        body = [[who(r, nr), r["opened"], bold(r["cold_lists"], r["cold_lists"] <= 2), r["cold_counts"],
                 f"{r['sim']['list']} / {r['sim']['counts']}", f(r["upstream_list_per_s"]),
                 " / ".join(f(x) for x in r["open"]), " / ".join(f(x) for x in r["cold"]),
                 " / ".join(f(x) for x in r["poll"]), f(r["read_p99"]),
                 f"{f(r['p99_kind']['list_p1'])} / {f(r['p99_kind']['counts'])}",
                 f"{r['reads_per_s']:.0f}", bold(r["failed"], r["failed"] == 0), r["xcache"]]
                for r in rows]
        out.append(md_table(cols, body))
        out.append("")
        out.append("Cold start: 2 distinct list pages and 1 counts, one instance. \"cold start\" = the "
                   "simulator's counters as read by each operator right after its own dashboard opened, "
                   "max over operators (the last one to open). Whole run: simulator counters before/after "
                   "k6. Cache answers: mesgate's `X-Cache`, nginx's `X-Cache-Status`.")
    else:
        out.append(f"### {sc}: {rows[0]['title']}")
        out.append("")
        cols = ["target", "k6 s", "reads/s", "read p50 ms", "read p99 ms",
                "read p99 ms: list p1 / list p2 / detail / counts", "failed requests", "changes",
                "creates", "409s", "dropped write iterations", "own-read checks", "stale reads",
                "superseded", "STALE served", "upstream list req/s", "upstream detail req/s",
                "upstream counts req/s", "cache answers"]
        body = [[who(r, nr), f"{r['secs']:.1f}", f"{r['reads_per_s']:.0f}", f(r["read_p50"]),
                 f(r["read_p99"]), " / ".join(f(r["p99_kind"][k]) for k in KINDS),
                 bold(r["failed"], r["failed"] == 0), r["changes"], r["creates"], r["conflicts"],
                 r["dropped"], r["checks"], bold(r["stale"], r["stale"] == 0), r["superseded"],
                 r["stale_served"], f"**{r['upstream_list_per_s']:.1f}**",
                 f"{r['upstream_detail_per_s']:.1f}", f"{r['upstream_counts_per_s']:.1f}", r["xcache"]]
                for r in rows]
        out.append(md_table(cols, body))
    line = ratio_line(rows)
    if line:
        out += ["", line]
    if sc == "redis_outage":
        out.append("")
        out.append("Outage: " + "; ".join(f"{who(r, nr)}: {r['outage']}" for r in rows) + ".")
        out.append("")
        cols = ["target", "phase", "operator reads", "read p50 ms", "read p99 ms", "read max ms",
                "list page 1 p99 ms", "writes", "write p99 ms", "write max ms", "failed requests",
                "own-read checks", "stale reads", "STALE served"]
        body = []
        for r in rows:
            for p in r["phases"]:
                body.append([who(r, nr), p["phase"], p["reads"], f(p["p50"]), f(p["p99"]), f(p["max"]),
                             f(p["list_p1_p99"]), p["writes"], f(p["write_p99"]), f(p["write_max"]),
                             f"**{p['failed']}**", p["checks"], f"**{p['stale']}**", p["stale_served"]])
        out.append(md_table(cols, body))
        out.append("")
        for r in rows:
            out.append(f"- {who(r, nr)}: {r['counters']}.")
    if sc in ("two_instances", "two_instances_outage"):
        out.append("")
        tmo = rows[0]["cross"]["timeout_ms"]
        cols = ["target", "cross-instance checks", "converged",
                "ack → fresh answer from B, p50 / p95 / p99 / max ms",
                "ack → sending of that request, p50 / p99 / max ms", f"B still stale after {tmo} ms",
                "B polls that were stale", "B's bus latency (mesgate metric, mean)", "read p99 ms on A / B"]
        body = []
        for r in rows:
            c = r["cross"]
            body.append([who(r, nr), c["checks"], c["converged"], " / ".join(f(x) for x in c["conv"]),
                         " / ".join(f(x) for x in c["sent"]), f"**{c['stale_beyond']}**", c["stale_polls"],
                         c["bus"], f"{f(c['p99_a'])} / {f(c['p99_b'])}"])
        out.append(md_table(cols, body))
    if sc == "two_instances_outage":
        out.append("")
        out.append("Outage: " + "; ".join(f"{who(r, nr)}: {r['outage']}" for r in rows) + ".")
        out.append("")
        late = rows[0]["b_stale_after_ms"]
        cols = ["target", "phase", "s", "B checks (writes)", f"B reads ≥ {late} ms after A's ack",
                f"**stale reads on B** (≥ {late} ms)", "B still stale after 2 s", "A own-read checks / stale",
                "failed requests", "operator reads", "read p99 ms on B", "write p99 ms",
                "MES list req/s", "MES detail req/s", "MES counts req/s"]
        body = []
        for r in rows:
            for p in r["phases"]:
                body.append([who(r, nr), p["phase"], f"{p['secs']:.1f}", p["b_checks"], p["b_late"],
                             f"**{p['b_stale']}**", p["cross_beyond"], f"{p['checks']} / {p['stale']}",
                             p["failed"], p["reads"], f(p["p99_b"]), f(p["write_p99"]), f(p["list_per_s"]),
                             f(p["detail_per_s"]), f(p["counts_per_s"])])
        out.append(md_table(cols, body))
        out.append("")
        for r in rows:
            b = r["b_total"]
            out.append(f"- {who(r, nr)}: stale reads on B **{b['stale']}** in {b['late']} late B reads "
                       f"({b['checks']} writes checked); B's bus cut-offs: {r['cut_offs']['b_at_resume']} "
                       f"just before Redis came back, {r['cut_offs']['b_end']} at the end (A: "
                       f"{r['cut_offs']['a_end']}); bus state from /readyz: {r['bus_log']}.")
        out.append("")
        out.append("MES req/s per phase: the simulator's counters at the first request, at the stop, "
                   "at the resume and at the end, over the phase's seconds; lists minus the writers' "
                   "truth reads of that phase.")
    notes = [r for r in rows if r["stale_lines"] or r["cross_stale_lines"] or r.get("b_stale_lines")]
    if notes:
        out.append("")
        for r in notes:
            out.append(f"- {who(r, nr)}: {r['stale_lines']} STALE, {r['cross_stale_lines']} CROSS-STALE "
                       f"and {r.get('b_stale_lines', 0)} B-STALE report line(s), request sequences in "
                       f"`{r['name']}.k6.log`")
    return "\n".join(out)


def load_rows(results):
    rows = []
    for p in sorted(glob.glob(f"{results}/*.row.json")):
        rows.append(json.load(open(p)))
    return rows


def tables(results):
    rows = load_rows(results)
    parts = []
    for sc in SCENARIOS:
        rs = [r for r in rows if r["scenario"] == sc]
        if not rs:
            continue
        t = scenario_tables(rs)
        with open(f"{results}/{sc}.md", "w") as fh:
            fh.write(t + "\n")
        parts.append(t)
    print("\n\n".join(parts))


# ---------------------------------------------------------------- compare.sh's summary

def outage_b(rs, target):
    """compare's cell for two_instances_outage: stale reads on B / late B reads, whole run and
    during the outage."""
    if not rs:
        return "n/a (no bus)" if target == "nginx" else "-"
    st = sum(r["b_total"]["stale"] for r in rs)
    late = sum(r["b_total"]["late"] for r in rs)
    dur = [p for r in rs for p in r["phases"] if p["phase"] == "during"]
    return (f"{st} / {late} ({sum(p['b_stale'] for p in dur)} / {sum(p['b_late'] for p in dur)})")


def compare(hit_json, k6_results):
    hit = json.load(open(hit_json)) if hit_json and os.path.exists(hit_json) else None
    rows = load_rows(k6_results) if k6_results else []
    H = (hit or {}).get("medians", {})

    def pick(target, sc):
        return [r for r in rows if r["target"] == target and r["scenario"] == sc]

    def agg(rs, fn, how=med):
        vals = [fn(r) for r in rs]
        vals = [x for x in vals if x is not None]
        return how(vals) if vals else None

    def ksum(rs, key):
        return sum(r[key] for r in rs) if rs else None

    def cell_hit(t, k, d=1):
        x = H.get(t, {}).get(k)
        return "-" if x is None else (f"{x:,.0f}" if k == "rps" else f"{x:.{d}f}")

    cols = ["target", "L1 hit req/s", "L1 hit CPU µs/req", "index hit req/s (CPU µs/req)", "L2 hit req/s (CPU µs/req, gateway + Redis)",
            "shift start: upstream list req / distinct pages", "live shift: stale reads / own-read checks",
            "live shift: read p99 ms", "live shift: upstream list req/s",
            "Redis outage: failed requests", "Redis outage: stale reads / checks",
            "two instances: B stale after 2 s / cross checks", "two instances: convergence p50 / max ms",
            "two instances, Redis stopped: stale reads on B / late B reads (during the outage)"]
    body = []
    fig = {}
    for target in ("mesgate", "mesgate-cluster", "nginx", "bare"):
        if target == "mesgate":
            l1, l2 = "gateway-L1", "gateway-L2"
        else:
            l1, l2 = target, None
        if target == "bare" and "bare" not in H:
            continue
        ss, ls, ro, ti, tio = (pick(target, s) for s in SCENARIOS)
        if target != "bare" and not (ss or ls or ro or ti or tio) and l1 not in H:
            continue
        ixcell = "-"
        if target == "mesgate" and "gateway-index" in H:
            ixcell = f"{cell_hit('gateway-index', 'rps')} ({cell_hit('gateway-index', 'total')})"
        elif target == "nginx":
            ixcell = "n/a (no index)"
        l2cell = "-"
        if l2 and l2 in H:
            l2cell = f"{cell_hit(l2, 'rps')} ({cell_hit(l2, 'total')})"
        elif target == "nginx":
            l2cell = "n/a (one tier)"

        def counts(rs, a, b):
            return "-" if not rs else f"{ksum(rs, a)} / {ksum(rs, b)}"
        shift = "-"
        if ss:
            shift = ", ".join(str(r["cold_lists"]) for r in ss) + f" / {ss[0]['distinct_pages']}"
        conv = "-"
        cross = "-"
        if ti:
            cross = f"{sum(r['cross']['stale_beyond'] for r in ti)} / {sum(r['cross']['checks'] for r in ti)}"
            p50 = agg(ti, lambda r: r["cross"]["conv"][0])
            mx = agg(ti, lambda r: r["cross"]["conv"][3], max)
            conv = f"{f(p50)} / {f(mx)}"
            conv_n = sum(r["cross"]["converged"] for r in ti)
            if conv_n < sum(r["cross"]["checks"] for r in ti):
                conv += f" ({conv_n} converged)"
        lp99 = agg(ls, lambda r: r["read_p99"])
        lup = agg(ls, lambda r: r["upstream_list_per_s"])
        ix = "gateway-index" if target == "mesgate" else l1
        fig[target] = {"l1_rps": H.get(l1, {}).get("rps"), "l1_cpu": H.get(l1, {}).get("total"),
                       "ix_rps": H.get(ix, {}).get("rps"), "ix_cpu": H.get(ix, {}).get("total"),
                       "p99": lp99, "up": lup}
        body.append([f"**{target}**" + (" (hit path only)" if target == "bare" else ""),
                     cell_hit(l1, "rps"), cell_hit(l1, "total"), ixcell, l2cell,
                     shift, counts(ls, "stale", "checks"), f(lp99),
                     "-" if lup is None else f"{lup:.1f}",
                     "-" if not ro else str(ksum(ro, "failed")),
                     counts(ro, "stale", "checks") + (" (no Redis in nginx)" if ro and target == "nginx" else ""),
                     cross, conv, outage_b(tio, target)])
    out = [md_table(cols, body)]
    if "mesgate" in fig and "nginx" in fig:
        a, b = fig["mesgate"], fig["nginx"]
        out.append("")
        out.append(f"**mesgate / nginx**: L1 hit req/s {ratio(a['l1_rps'], b['l1_rps'])}, "
                   f"L1 hit CPU per request {ratio(a['l1_cpu'], b['l1_cpu'])}; index hit req/s "
                   f"{ratio(a['ix_rps'], b['ix_rps'])} (CPU per request {ratio(a['ix_cpu'], b['ix_cpu'])}); live shift read p99 "
                   f"{ratio(a['p99'], b['p99'])}, upstream list req/s {ratio(a['up'], b['up'])}")
    rounds = sorted({r["round"] for r in rows})
    out.append("")
    out.append(f"Hit path: medians over {hit.get('rounds', '?') if hit else '?'} oha rounds "
               f"({hit.get('disturbed_rounds', '?') if hit else '?'} disturbed). k6 scenarios: "
               f"{len(rounds)} round(s); counts are summed over rounds, latencies and rates are "
               f"medians over rounds, convergence max is the max.")
    print("\n".join(out))


def main(argv):
    if len(argv) >= 4 and argv[1] == "row":
        row(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "tables":
        tables(argv[2])
    elif len(argv) >= 4 and argv[1] == "compare":
        compare(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
