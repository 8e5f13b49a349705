"""Writing results: results.json (schema in benchmarks/README.md), report.md, plots.

The report is built so that it cannot be read wrongly: the A/A checks (the same op on both
sides, first and last) decide whether the timings count, and a run whose checks fail, or a
smoke run, states so in its header and does not judge any target; the memory-bound cases'
bytes per second stand next to the machine's bandwidth from the same run; what each swap
fixes (its error figure and non-finite counts next to the baseline's) stands next to what
it costs.
"""

import json
import os

__all__ = ["aa_verdict", "annotate_bandwidth", "bandwidth_lines", "bandwidth_verdict",
           "bar_summary", "combine_bandwidth", "finalize_header", "fixes_text", "judge_bars",
           "markdown_table", "progress_line", "status_banner", "target_text", "write"]

SCHEMA = 2

# the A/A check's ratio must lie in this range for the run's timings to count; the same range
# bounds the ratio of the two bandwidth measurements (first and last) of a device
AA_RANGE = (0.9, 1.1)

# a median of fewer timed rounds is one or two samples: a burst of load can fall on all of them
# with the A/A checks, taken at other moments, still passing
MIN_JUDGED_REPEATS = 5


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_err(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _dev(result):
    return result["device"].split("device:")[-1]


def progress_line(result, done, total, case_s, elapsed, eta):
    parts = []
    for row in result["timings"]:
        if "ratio" in row:
            parts.append(f"{row['mode']}/{row['direction']} {row['ratio']['median']:.2f}x")
        elif "safeops" in row:
            parts.append(f"{row['mode']}/{row['direction']} {_fmt_time(row['safeops']['median_s'])}")
        else:
            parts.append(f"{row['mode']}/{row['direction']} failed")
    if result.get("error"):
        parts.append("ERROR " + result["error"])
    return (f"[{done}/{total}] {result['case']} on {_dev(result)}: "
            f"{', '.join(parts)} ({case_s:.1f} s; elapsed {elapsed:.0f} s, "
            f"about {eta:.0f} s left)")


# -- the A/A gate and the judging of targets ---------------------------------------------------

def aa_verdict(aa_results, low=AA_RANGE[0], high=AA_RANGE[1]):
    """Whether the A/A checks pass: ``(reliable, reasons)``.

    Every timing row of every A/A result must have its median ratio within [low, high];
    a check that is missing, failed or has no timed row also makes the timings unreliable.
    `reasons` says which check and row failed, and by how much.
    """
    reasons = []
    positions = [r.get("position", "?") for r in aa_results]
    for needed in ("first", "last"):
        if needed not in positions:
            reasons.append(f"the A/A check did not run {needed}")
    for r in aa_results:
        where = f"A/A check ({r.get('position', '?')}, {_dev(r)})"
        if r.get("error"):
            reasons.append(f"{where} failed: {r['error']}")
            continue
        rows = [t for t in r["timings"] if "ratio" in t]
        if not rows:
            reasons.append(f"{where} has no timed row")
        for t in r["timings"]:
            if "error" in t:
                reasons.append(f"{where} {t['mode']}/{t['direction']} failed: {t['error']}")
        for t in rows:
            m = t["ratio"]["median"]
            if not low <= m <= high:
                reasons.append(f"{where} {t['mode']}/{t['direction']}: {m:.2f}x, outside "
                               f"{low:g}-{high:g}x (the same op timed against itself)")
    return not reasons, reasons


def combine_bandwidth(first, last):
    """One device's bandwidth from its two measurements (before the cases and after them).

    Each kernel keeps its faster run: a load that slows one run lowers the limit, and a
    lower limit would make an op look closer to it than it is. Both runs stay under
    ``"runs"`` for `bandwidth_verdict`.
    """
    out = {k: v for k, v in first.items() if k not in ("copy", "read")}
    for kind in ("copy", "read"):
        runs = [m.get(kind) for m in (first, last) if m.get(kind)]
        timed = [k for k in runs if "gbps" in k]
        if timed:
            out[kind] = max(timed, key=lambda k: k["gbps"])
        elif runs:
            out[kind] = runs[0]
    out["runs"] = {"first": first, "last": last}
    return out


def bandwidth_verdict(bandwidth, low=AA_RANGE[0], high=AA_RANGE[1]):
    """Whether every device's two bandwidth runs agree: ``(reliable, reasons)``.

    A device measured once (no ``"runs"``) has nothing to compare and is not held against
    the run; a kernel that ran both times must give last/first within [low, high].
    """
    reasons = []
    for device, bw in bandwidth.items():
        runs = bw.get("runs")
        if not runs:
            continue
        for kind in ("copy", "read"):
            a = runs.get("first", {}).get(kind, {}).get("gbps")
            b = runs.get("last", {}).get(kind, {}).get("gbps")
            if a and b and not low <= b / a <= high:
                reasons.append(f"bandwidth ({device.split('device:')[-1]}, {kind}): last run "
                               f"{b:.1f} GB/s against {a:.1f} GB/s first, {b / a:.2f}x, outside "
                               f"{low:g}-{high:g}x")
    return not reasons, reasons


def judge_bars(results, judged, limits_judged=None):
    """Set ``meets_bar`` (the ratio or absolute target) on every row with a target when
    `judged`, and ``meets_bar_limit`` (the target on the distance from the bandwidth limit)
    when `limits_judged` too (default: `judged`); remove them otherwise. Call after
    `annotate_bandwidth`."""
    limits_judged = judged if limits_judged is None else judged and limits_judged
    for r in results:
        for t in r["timings"]:
            t.pop("meets_bar", None)
            t.pop("meets_bar_limit", None)
            if not judged or "error" in t:
                continue
            if t.get("bar") is not None and "ratio" in t:
                t["meets_bar"] = t["ratio"]["median"] <= t["bar"]
            elif t.get("bar_s") is not None and "safeops" in t:
                t["meets_bar"] = t["safeops"]["median_s"] <= t["bar_s"]
            if t.get("bar_limit") is not None and limits_judged:
                # no bandwidth measured: the target cannot be shown met
                over = t.get("bandwidth", {}).get("over_limit")
                t["meets_bar_limit"] = over is not None and over <= t["bar_limit"]


def _targets(row, baseline_name):
    """[(name, measured, met or None)] for the row's targets, each named by what it is."""
    out = []
    if row.get("bar") is not None:
        value = f"{row['ratio']['median']:.2f}x" if "ratio" in row else "-"
        out.append((f"<= {row['bar']:g}x {baseline_name}", value, row.get("meets_bar")))
    elif row.get("bar_s") is not None:
        value = f"{row['safeops']['median_s']:.2f} s" if "safeops" in row else "-"
        out.append((f"< {row['bar_s']:g} s", value, row.get("meets_bar")))
    if row.get("bar_limit") is not None:
        b = row.get("bandwidth", {})
        value = f"{b['over_limit']:.2f}x" if "over_limit" in b else "no bandwidth measured"
        out.append((f"<= {row['bar_limit']:g}x the time at the machine's "
                    f"{b.get('limit', 'memory')} bandwidth", value, row.get("meets_bar_limit")))
    return out


def _unmeasured_text(targets, key, baseline_name):
    row = {"bar": targets.get("ratio", {}).get(key), "bar_s": targets.get("seconds", {}).get(key),
           "bar_limit": targets.get("limit", {}).get(key)}
    names = [name for name, _, _ in _targets(row, baseline_name)]
    return "; ".join(f"target: {n} (not measured in this run)" for n in names)


def target_text(row, baseline_name):
    """The targets named by what they are: "target: <= 1.5x tf.reduce_sum" (and met / NOT
    MET where the run judged them, "(not judged)" otherwise)."""
    texts = []
    for name, _, met in _targets(row, baseline_name):
        state = " (not judged)" if met is None else f": {'met' if met else 'NOT MET'}"
        texts.append(f"target: {name}{state}")
    return "; ".join(texts) or "-"


def status_banner(header):
    """Bold lines that open the report (and mark the plots) when its timings mean nothing."""
    lines = []
    if header.get("mode") == "smoke":
        lines.append("SMOKE RUN: tiny sizes and one repeat; the timings, ratios and bandwidths "
                     "mean nothing and no target is judged (the run only checks that every "
                     "case works).")
    if not header.get("timings_reliable", True):
        lines.append("TIMINGS UNRELIABLE: " + "; ".join(header.get(
            "timings_unreliable_because", [])) + ". Something other than the ops moved the "
                     "timings (a busy machine, a changing clock"
                     + (", compilation inside the timed calls of a run without warm-up"
                        if header.get("warmup") == 0 else "")
                     + "): no ratio below is evidence, and the targets are not judged.")
    elif not header.get("limits_reliable", True) and header.get("mode") != "smoke":
        lines.append("BANDWIDTH UNSTABLE: " + "; ".join(header.get(
            "limits_unreliable_because", [])) + ". The machine's bandwidth changed during the "
                     "run: the distances from the bandwidth limit are indicative and their "
                     "targets are not judged. The ratios are judged: the A/A checks passed, "
                     "and each ratio pairs interleaved calls of the two sides.")
    return lines


# -- bandwidth ---------------------------------------------------------------------------------

def _limit_kind(nbytes):
    """The STREAM-like kernel a case is held to: "read" when it writes little (a
    reduction), "copy" otherwise."""
    return "read" if nbytes["written"] * 8 < nbytes["read"] else "copy"


def annotate_bandwidth(results, bandwidth):
    """Add ``row["bandwidth"]`` to every timed row that declares its bytes.

    `bandwidth` maps a device name to `harness.measure_bandwidth`'s result. The entry
    holds the achieved GB/s of each side, the limit's kind and GB/s, and ``over_limit``:
    the safeops time over the time the limit allows (1.0 is the machine's bandwidth; the
    target for a sum is <= 1.3). Both sides of that quotient use the same statistic, the
    best sample: the limit is STREAM's best rate, so the op's rate is its best call too
    (declared bytes / fastest time); a median against a best would count the machine's
    noise as the op's distance from the limit.
    """
    for r in results:
        bw = bandwidth.get(r["device"], {})
        for t in r["timings"]:
            nbytes = t.get("bytes")
            if not nbytes or "safeops" not in t:
                continue
            total = nbytes["read"] + nbytes["written"]
            entry = {"bytes": total,
                     "safeops_gbps": total / t["safeops"]["min_s"] / 1e9}
            if "baseline" in t:
                entry["baseline_gbps"] = total / t["baseline"]["min_s"] / 1e9
            kind = _limit_kind(nbytes)
            limit = bw.get(kind, {})
            if limit.get("gbps"):
                entry["limit"] = kind
                entry["limit_gbps"] = limit["gbps"]
                entry["over_limit"] = limit["gbps"] / entry["safeops_gbps"]
            t["bandwidth"] = entry


def _bandwidth_text(row):
    b = row.get("bandwidth")
    if not b:
        return "-"
    text = f"{b['safeops_gbps']:.1f} GB/s"
    if "baseline_gbps" in b:
        text += f" (baseline {b['baseline_gbps']:.1f})"
    if "limit" in b:
        text += f"; {b['over_limit']:.2f}x the {b['limit']} limit {b['limit_gbps']:.1f} GB/s"
    return text


# -- what a swap fixes -------------------------------------------------------------------------

def _pairs(acc):
    """Side-by-side extras of an accuracy dict: {"nonfinite grad": (baseline, safeops)}."""
    out = {}
    for k in acc:
        if k.startswith("baseline_"):
            what = k[len("baseline_"):]
            out[what.replace("_", " ")] = (acc[k], acc.get(f"safeops_{what}"))
        elif k.startswith("safeops_") and f"baseline_{k[len('safeops_'):]}" not in acc:
            out[k[len("safeops_"):].replace("_", " ")] = (None, acc[k])
    return out


def _paired_keys(acc):
    keys = {"metric", "baseline", "safeops"}
    for k in acc:
        if k.startswith(("baseline_", "safeops_")):
            keys.add(k)
    return keys


def fixes_text(acc):
    """'what it fixes': the baseline's and safeops's error figure (and non-finite counts)
    side by side, "metric: baseline -> safeops"."""
    if not acc:
        return "-"
    metric = acc.get("metric", "-")
    if metric.startswith("n/a"):
        return metric
    if "baseline" in acc:
        parts = [f"{metric}: {_fmt_err(acc['baseline'])} -> {_fmt_err(acc.get('safeops'))}"]
    else:
        parts = [f"{metric}: safeops {_fmt_err(acc.get('safeops'))}"]
    for what, (b, s) in _pairs(acc).items():
        parts.append(f"{what}: {_fmt_err(b)} -> {_fmt_err(s)}")
    return "; ".join(parts)


# -- markdown ----------------------------------------------------------------------------------

def bar_summary(results, judged=True, why_not=""):
    """Markdown lines: the summary of the targets (or why it is withheld), and one line per
    case with its targets."""
    met, missed, failed, nobar = [], [], [], []
    per_case = []
    for r in results:
        dev = _dev(r)
        base_name = r.get("baseline_name", "baseline")
        barred = [t for t in r["timings"] if _targets(t, base_name)]
        for t in r["timings"]:
            if "error" in t:
                failed.append(f"{r['case']} [{dev}] {t['mode']}/{t['direction']}: {t['error']}")
        if r.get("error"):
            failed.append(f"{r['case']} [{dev}]: {r['error']}")
        verdicts = []
        for t in barred:
            for name, value, ok in _targets(t, base_name):
                if ok is None:
                    continue
                verdicts.append(ok)
                item = (f"{r['case']} [{dev}] {t['mode']}/{t['direction']}: {value}; "
                        f"target: {name}")
                (met if ok else missed).append(item)
        measured = {f"{t['mode']}/{t['direction']}" for t in r["timings"]}
        unmeasured = sorted({key for kind in (r.get("targets") or {}).values() for key in kind}
                            - measured)
        if not barred and not unmeasured and not r.get("error"):
            nobar.append(f"{r['case']} [{dev}]")
        if not barred and not unmeasured:
            state = "no target"
        elif not barred:
            state = "not measured in this run"
        elif not judged or not verdicts:
            state = "not judged"
        else:
            state = "met" if all(verdicts) else "NOT MET"
        note = r.get("bar_source") or "none stated"
        per_case.append(f"- {r['case']} [{dev}]: {note} -> {state}" + "".join(
            f"; {t['mode']}/{t['direction']} {target_text(t, base_name)}" for t in barred)
            + "".join(f"; {key} {_unmeasured_text(r['targets'], key, base_name)}"
                      for key in unmeasured))
    lines = ["## Summary: speed targets", ""]
    if not judged:
        lines += [f"**Withheld: no target is judged in this run ({why_not}).** The ratios below "
                  "are listed for inspection only.", "",
                  f"{len(failed)} case(s)/row(s) failed to run, {len(nobar)} case(s) without a "
                  "stated target.", ""]
        if failed:
            lines += ["Failed to run:", ""] + [f"- {m}" for m in failed] + [""]
        return lines, per_case
    lines += [f"{len(met)} target(s) met, {len(missed)} not met, {len(failed)} case(s)/row(s) "
              f"failed to run, {len(nobar)} case(s) without a stated target.", ""]
    lines += ["Not met:", ""] + ([f"- {m}" for m in missed] or ["- none"]) + [""]
    if failed:
        lines += ["Failed to run:", ""] + [f"- {m}" for m in failed] + [""]
    lines += ["Met:", ""] + ([f"- {m}" for m in met] or ["- none"]) + [""]
    return lines, per_case


TABLE_COLUMNS = ("case", "device", "mode", "direction", "baseline", "safeops",
                 "ratio (min-max)", "target", "bandwidth (safeops; limit)",
                 "what it fixes (baseline -> safeops)")


def markdown_table(results):
    """One row per case, device, mode and direction; the case's 'what it fixes' on its
    first row."""
    n = len(TABLE_COLUMNS)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|---" * n + "|"]
    for r in results:
        dev = _dev(r)
        fixes = fixes_text(r.get("accuracy"))
        base_name = r.get("baseline_name", "baseline")
        if r.get("error"):
            lines.append(f"| {r['case']} | {dev} | - | - | - | - | ERROR: {r['error']} | | | "
                         f"{fixes} |")
            fixes = ""
        for row in r["timings"]:
            if "error" in row:
                lines.append(f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | - |"
                             f" - | failed: {row['error']} | | | {fixes} |")
                fixes = ""
                continue
            ratio = row.get("ratio")
            ratio_s = "-" if ratio is None else (
                f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})")
            lines.append(
                f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | "
                f"{_fmt_time(row['baseline']['median_s']) if 'baseline' in row else '-'} | "
                f"{_fmt_time(row['safeops']['median_s'])} | {ratio_s} | "
                f"{target_text(row, base_name)} | {_bandwidth_text(row)} | {fixes} |")
            fixes = ""
        if fixes:  # a case without a timed row still says what it fixes
            lines.append(f"| {r['case']} | {dev} | - | - | - | - | - | - | - | {fixes} |")
    return "\n".join(lines)


def _anchor_lines(results):
    """Anchors (timed references such as TFP's Kahan sum), other references' errors and
    case facts; the baseline/safeops figures are in the main table."""
    lines = []
    for r in results:
        acc = r.get("accuracy") or {}
        anchors = {}
        for row in r["timings"]:
            for name, s in row.get("anchors", {}).items():
                anchors[name] = s["median_s"]
        extra = {k: v for k, v in acc.items() if k not in _paired_keys(acc)}
        if anchors or extra or r.get("extra"):
            base = next((row["baseline"]["median_s"] for row in r["timings"]
                         if row.get("mode") == "graph" and row.get("direction") == "fwd"
                         and "baseline" in row), None)
            items = [f"{k}: {_fmt_time(v)}" + (f" ({v / base:.1f}x baseline)" if base else "")
                     for k, v in anchors.items()]
            items += [f"{k} error {_fmt_err(v)}" for k, v in extra.items()]
            items += [f"{k}: {v}" for k, v in (r.get("extra") or {}).items()]
            lines.append(f"- {r['case']}: " + "; ".join(items))
    return lines


def _bandwidth_lines(bandwidth):
    lines = ["## Machine bandwidth (STREAM-like, measured in this run)", "",
             "copy: `DeepCopy` of a float32 buffer, bytes read + bytes written (as STREAM "
             "counts them); read: `reduce_max` of the same buffer, bytes read. A memory-bound "
             "case is held to the read limit when it writes less than 1/8 of what it reads (a "
             "reduction), to the copy limit otherwise; its 'x the limit' is its time over the "
             "time its declared bytes take at that bandwidth (1.00x = at the machine's limit).",
             ""]
    for device, bw in bandwidth.items():
        parts = []
        for kind in ("copy", "read"):
            k = bw.get(kind, {})
            if "gbps" in k:
                parts.append(f"{kind} {k['gbps']:.1f} GB/s ({k['bytes'] / 2 ** 20:.0f} MiB in "
                             f"{_fmt_time(k['median_s'])})")
            elif "error" in k:
                parts.append(f"{kind} failed: {k['error']}")
        if "error" in bw:
            parts.append(f"failed: {bw['error']}")
        runs = bw.get("runs") or {}
        if runs:
            parts.append("faster of two runs, before and after the cases (" + ", ".join(
                f"{pos}: " + "/".join(f"{runs[pos].get(kind, {}).get('gbps', 0):.1f}"
                                      for kind in ("copy", "read"))
                for pos in ("first", "last") if pos in runs) + " GB/s copy/read)")
        lines.append(f"- {device}: " + "; ".join(parts))
    return lines + [""]


def bandwidth_lines(results):
    """Markdown table: every memory-bound row, its achieved GB/s and its distance from the
    machine's limit, farthest first."""
    rows = []
    for r in results:
        for t in r["timings"]:
            b = t.get("bandwidth")
            if b and "over_limit" in b:
                rows.append((b["over_limit"], r, t, b))
    if not rows:
        return []
    rows.sort(key=lambda x: -x[0])
    lines = ["## Distance from the bandwidth limit (memory-bound cases)", "",
             "Time over the time the declared bytes take at the machine's bandwidth (1.00x = at "
             "the limit), farthest first. The GB/s of every side are its best call, as the "
             "limit is STREAM's best rate.", "",
             "| case | device | mode | direction | MB moved | safeops GB/s | baseline GB/s | "
             "limit | x the limit |", "|---" * 9 + "|"]
    for over, r, t, b in rows:
        base = f"{b['baseline_gbps']:.1f}" if "baseline_gbps" in b else "-"
        lines.append(f"| {r['case']} | {_dev(r)} | {t['mode']} | {t['direction']} | "
                     f"{b['bytes'] / 1e6:.3g} | {b['safeops_gbps']:.1f} | {base} | "
                     f"{b['limit']} {b['limit_gbps']:.1f} GB/s | {over:.2f}x |")
    return lines + [""]


def _aa_lines(aa_results, reliable, reasons):
    lines = ["## A/A checks (tf.reduce_sum against itself, first and last)", "",
             "Each must give 0.9-1.1x in every mode; otherwise the run's timings are unreliable "
             "and no target is judged.", ""]
    for r in aa_results:
        rows = [f"{t['mode']}/{t['direction']} "
                + (f"{t['ratio']['median']:.2f}x" if "ratio" in t else "failed")
                for t in r["timings"]]
        lines.append(f"- {r.get('position', '?')} on {_dev(r)}: "
                     + (", ".join(rows) or r.get("error", "no row")))
    lines += ["", "Verdict: " + ("pass" if reliable else "FAIL: " + "; ".join(reasons)), ""]
    return lines


def finalize_header(header, aa_checks, bandwidth=None):
    """`header` plus the run's verdict: ``timings_reliable`` and why not (the A/A checks:
    the interleaved ratios are evidence only when the same op timed against itself gives
    1.0x), ``limits_reliable`` and why not (the two bandwidth runs: the distances from the
    limit need a bandwidth that held during the run), ``bars_judged`` and why not (a smoke
    run, unreliable timings, fewer than `MIN_JUDGED_REPEATS` timed rounds)."""
    reliable, reasons = aa_verdict(list(aa_checks))
    bw_reliable, bw_reasons = bandwidth_verdict(bandwidth or {})
    header = dict(header, timings_reliable=reliable, timings_unreliable_because=reasons,
                  limits_reliable=bw_reliable, limits_unreliable_because=bw_reasons)
    why_not = []
    if header.get("mode") == "smoke":
        why_not.append("smoke run: tiny sizes, one repeat")
    elif header.get("repeats", MIN_JUDGED_REPEATS) < MIN_JUDGED_REPEATS:
        why_not.append(f"{header['repeats']} timed round(s), fewer than the "
                       f"{MIN_JUDGED_REPEATS} a median needs")
    if not reliable:
        why_not.append("timings unreliable: the A/A check is outside its range")
    header["bars_judged"] = not why_not
    header["bars_not_judged_because"] = "; ".join(why_not) or None
    return header


def write(output_dir, header, results, sweeps=(), aa_checks=(), bandwidth=None):
    """Write results.json, report.md and the PNG plots; return the paths.

    Decides, from the header's mode and the A/A checks, whether the targets are judged
    (`finalize_header`), records the verdict in the header, and sets each memory-bound
    row's bandwidth figures.
    """
    bandwidth = bandwidth or {}
    aa_checks = list(aa_checks)
    header = finalize_header(header, aa_checks, bandwidth)
    reliable = header["timings_reliable"]
    reasons = header["timings_unreliable_because"]
    smoke = header.get("mode") == "smoke"
    judged = header["bars_judged"]
    annotate_bandwidth(results, bandwidth)
    annotate_bandwidth(aa_checks, bandwidth)
    judge_bars(results, judged, header["limits_reliable"])

    os.makedirs(output_dir, exist_ok=True)
    paths = []
    json_path = os.path.join(output_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump({"schema": SCHEMA, "header": header, "aa_checks": aa_checks,
                   "bandwidth": bandwidth, "results": results, "sweeps": list(sweeps)},
                  f, indent=1, default=str)
    paths.append(json_path)
    summary, per_case = bar_summary(results, judged, header["bars_not_judged_because"] or "")
    md = ["# safeops benchmark report" + (" (SMOKE RUN)" if smoke else ""), ""]
    for line in status_banner(header):  # one paragraph each
        md += [f"**{line}**", ""]
    md += [f"- {k}: {v}" for k, v in header.items()]
    md += [""]
    md += _aa_lines(aa_checks, reliable, reasons)
    md += _bandwidth_lines(bandwidth)
    md += summary
    md += bandwidth_lines(results)
    md += ["## Results", "",
           "Ratio = safeops time / baseline time, median of pairwise ratios (interleaved A/B). "
           "Target: the speed target for that mode and direction, named by what it is, and "
           "whether the median ratio meets it (only in a run whose A/A checks pass, never at "
           "smoke sizes). Bandwidth: the memory-bound cases' declared bytes over the best "
           "call's time, next to the machine's limit above (also a best rate). What it fixes: the baseline's and "
           "safeops's error against safeops.testing exact references (or float64 / mpmath "
           "where the metric says so), with non-finite output and gradient counts; "
           "'n/a: ...' says why a case has none. The size in each case's name is the size "
           "that ran.", "",
           markdown_table(results), ""]
    md += ["## Targets per case", ""] + per_case + [""]
    anchors = _anchor_lines(results)
    if anchors:
        md += ["## Anchors, other references and case facts", ""] + anchors + [""]
    for sw in sweeps:
        md += [f"## {sw['title']}" + (" (smoke run: tiny sizes)" if smoke else ""), ""]
        if sw.get("error"):
            md += [f"failed: {sw['error']}", ""]
            continue
        data = sw["data"]
        keys = data.get("x", data.get("categories", []))
        md += ["| " + sw["xlabel"] + " | " + " | ".join(data["series"]) + " |",
               "|---" * (len(data["series"]) + 1) + "|"]
        for i, k in enumerate(keys):
            vals = [_fmt_err(v[i]) for v in data["series"].values()]
            md.append(f"| {_fmt_err(k)} | " + " | ".join(vals) + " |")
        md += ["", f"![{sw['name']}]({sw['name']}.png)", ""]
    md_path = os.path.join(output_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    paths.append(md_path)
    from benchmarks import plots

    paths += plots.write_plots(output_dir, results, sweeps, banner=status_banner(header),
                               judged=judged)
    return paths
