"""Writing results: results.json (schema in benchmarks/README.md), report.md, plots."""

import json
import os

__all__ = ["bar_summary", "markdown_table", "progress_line", "write"]


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
    return (f"[{done}/{total}] {result['case']} on {result['device'].split('device:')[-1]}: "
            f"{', '.join(parts)} ({case_s:.1f} s; elapsed {elapsed:.0f} s, "
            f"about {eta:.0f} s left)")


def _bar_text(row):
    if row.get("bar") is not None:
        return f"<= {row['bar']:g}x {'met' if row['meets_bar'] else 'NOT MET'}"
    if row.get("bar_s") is not None:
        return f"< {row['bar_s']:g} s {'met' if row['meets_bar'] else 'NOT MET'}"
    return "-"


def bar_summary(results):
    """Markdown lines: bars met / not met / without a bar, and each case's bar and source."""
    met, missed, failed, nobar = [], [], [], []
    per_case = []
    for r in results:
        dev = r["device"].split("device:")[-1]
        barred = [t for t in r["timings"] if "meets_bar" in t]
        for t in r["timings"]:
            if "error" in t:
                failed.append(f"{r['case']} [{dev}] {t['mode']}/{t['direction']}: {t['error']}")
        if r.get("error"):
            failed.append(f"{r['case']} [{dev}]: {r['error']}")
        for t in barred:
            value = (f"{t['ratio']['median']:.2f}x" if "bar" in t
                     else f"{t['safeops']['median_s']:.2f} s")
            item = f"{r['case']} [{dev}] {t['mode']}/{t['direction']}: {value} vs {_bar_text(t)}"
            (met if t["meets_bar"] else missed).append(item)
        if not barred and not r.get("error"):
            nobar.append(f"{r['case']} [{dev}]")
        state = ("no bar" if not barred else "met" if all(t["meets_bar"] for t in barred)
                 else "NOT MET")
        per_case.append(f"- {r['case']} [{dev}]: bar: {r.get('bar_source', 'none stated')} "
                        f"-> {state}"
                        + "".join(f"; {t['mode']}/{t['direction']} {_bar_text(t)}" for t in barred))
    lines = ["## Summary: speed bars", "",
             f"{len(met)} bar(s) met, {len(missed)} not met, {len(failed)} case(s)/row(s) "
             f"failed to run, {len(nobar)} case(s) without a stated bar.", ""]
    lines += ["Not met:", ""] + ([f"- {m}" for m in missed] or ["- none"]) + [""]
    if failed:
        lines += ["Failed to run:", ""] + [f"- {m}" for m in failed] + [""]
    lines += ["Met:", ""] + ([f"- {m}" for m in met] or ["- none"]) + [""]
    return lines, per_case


def markdown_table(results):
    lines = [
        "| case | device | mode | direction | baseline | safeops | ratio (min-max) | bar | "
        "error metric | error baseline | error safeops |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        acc = r.get("accuracy") or {}
        metric = acc.get("metric", "-")
        dev = r["device"].split("device:")[-1]
        if r.get("error"):
            lines.append(f"| {r['case']} | {dev} | - | - | - | - | ERROR: {r['error']} | | | | |")
        for row in r["timings"]:
            if "error" in row:
                lines.append(f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | - | - |"
                             f" failed: {row['error']} | | | | |")
                continue
            ratio = row.get("ratio")
            ratio_s = "-" if ratio is None else (
                f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})")
            lines.append(
                f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | "
                f"{_fmt_time(row['baseline']['median_s']) if 'baseline' in row else '-'} | "
                f"{_fmt_time(row['safeops']['median_s'])} | {ratio_s} | {_bar_text(row)} | "
                f"{metric} | {_fmt_err(acc.get('baseline'))} | {_fmt_err(acc.get('safeops'))} |")
    return "\n".join(lines)


def _anchor_lines(results):
    lines = []
    for r in results:
        acc = r.get("accuracy") or {}
        anchors = {}
        for row in r["timings"]:
            for name, s in row.get("anchors", {}).items():
                anchors[name] = s["median_s"]
        extra = {k: v for k, v in acc.items() if k not in ("metric", "baseline", "safeops")}
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


def write(output_dir, header, results, sweeps=()):
    """Write results.json, report.md and the PNG plots; return the paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    json_path = os.path.join(output_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump({"schema": 1, "header": header, "results": results, "sweeps": list(sweeps)},
                  f, indent=1, default=str)
    paths.append(json_path)
    summary, per_case = bar_summary(results)
    md = ["# safeops benchmark report", ""]
    md += [f"- {k}: {v}" for k, v in header.items()]
    md += [""]
    if header.get("mode") == "smoke":
        md += ["**Smoke mode: tiny sizes and one repeat; the timings and bars below mean nothing "
               "(the run only checks that every case works).**", ""]
    md += summary
    md += ["## Results", "",
           "Ratio = safeops time / baseline time, median of pairwise ratios (interleaved A/B). "
           "Bar: the op issue's speed bar for that mode and direction, and whether the median "
           "ratio meets it. Errors are against safeops.testing exact references (or float64 / "
           "mpmath where stated in the metric); 'n/a: ...' says why a case has no accuracy.", "",
           markdown_table(results), ""]
    md += ["## Bars per case (source: the op issues)", ""] + per_case + [""]
    anchors = _anchor_lines(results)
    if anchors:
        md += ["## Anchors, references and case facts", ""] + anchors + [""]
    for sw in sweeps:
        md += [f"## {sw['title']}", ""]
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

    paths += plots.write_plots(output_dir, results, sweeps)
    return paths
