"""Writing results: results.json (schema in benchmarks/README.md), report.md, plots."""

import json
import os

__all__ = ["markdown_table", "progress_line", "write"]


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
        else:
            parts.append(f"{row['mode']}/{row['direction']} failed")
    if result.get("error"):
        parts.append("ERROR " + result["error"])
    return (f"[{done}/{total}] {result['case']} on {result['device'].split('device:')[-1]}: "
            f"{', '.join(parts)} ({case_s:.1f} s; elapsed {elapsed:.0f} s, "
            f"about {eta:.0f} s left)")


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
            if "ratio" not in row:
                lines.append(f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | - | - |"
                             f" failed: {row['error']} | | | | |")
                continue
            ratio = row["ratio"]
            bar = row.get("bar")
            bar_s = "-" if bar is None else f"{bar:g}x {'ok' if row['meets_bar'] else 'MISSED'}"
            lines.append(
                f"| {r['case']} | {dev} | {row['mode']} | {row['direction']} | "
                f"{_fmt_time(row['baseline']['median_s'])} | {_fmt_time(row['safeops']['median_s'])}"
                f" | {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}) | {bar_s} | "
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
        if anchors or extra:
            base = next((row["baseline"]["median_s"] for row in r["timings"]
                         if row.get("mode") == "graph" and row.get("direction") == "fwd"
                         and "baseline" in row), None)
            items = [f"{k}: {_fmt_time(v)}" + (f" ({v / base:.1f}x baseline)" if base else "")
                     for k, v in anchors.items()]
            items += [f"{k} error {_fmt_err(v)}" for k, v in extra.items()]
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
    md = ["# safeops benchmark report", ""]
    md += [f"- {k}: {v}" for k, v in header.items()]
    md += ["", "Ratio = safeops time / baseline time, median of pairwise ratios (interleaved A/B). "
           "Errors are against safeops.testing exact references.", "",
           markdown_table(results), ""]
    anchors = _anchor_lines(results)
    if anchors:
        md += ["## Anchors and references", ""] + anchors + [""]
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
