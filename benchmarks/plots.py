"""PNG plots of a benchmark run: accuracy sweeps and the overhead-ratio bar chart."""

import os

__all__ = ["write_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_sweep(plt, sweep, path):
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    data = sweep["data"]
    if sweep.get("kind", "line") == "bar":
        cats = data["categories"]
        labels = list(data["series"])
        width = 0.8 / max(1, len(labels))
        for k, label in enumerate(labels):
            # a None value (e.g. TF has no such op) gets no bar at all, not a 0-height one
            pts = [(i + (k - (len(labels) - 1) / 2) * width, y)
                   for i, y in enumerate(data["series"][label]) if y is not None]
            color = f"C{k}"
            if pts:
                ax.bar(*zip(*pts), width=width, label=label, color=color)
            else:
                ax.bar([], [], width=width, label=label, color=color)
        missing = [f"{label}: {cats[i]}" for label, ys in data["series"].items()
                   for i, y in enumerate(ys) if y is None]
        if missing:
            ax.text(0.01, 0.98, "no bar = not available (" + "; ".join(missing)[:150] + ")",
                    transform=ax.transAxes, va="top", fontsize=7)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=8)
    else:
        markers = "os^vDx+*"
        for k, (label, ys) in enumerate(data["series"].items()):
            pts = [(x, y) for x, y in zip(data["x"], ys) if y is not None]
            if sweep.get("log_y", True):
                # exact results (error 0) are drawn at the floor so they stay visible
                pts = [(x, max(y, 1e-17)) for x, y in pts]
            if pts:
                ax.plot(*zip(*pts), marker=markers[k % len(markers)], label=label)
        if sweep.get("log_x", True):
            ax.set_xscale("log")
    if sweep.get("log_y", True):
        ax.set_yscale("log")
    ax.set_title(sweep["title"])
    ax.set_xlabel(sweep["xlabel"])
    ax.set_ylabel(sweep["ylabel"])
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_overhead(plt, results, path):
    rows = []
    for r in results:
        # one bar per case: graph fwd+bwd, else graph fwd, else eager (Python-level cases)
        by_key = {(t["mode"], t["direction"]): t for t in r["timings"] if "ratio" in t}
        for key in (("graph", "fwd+bwd"), ("graph", "fwd"), ("eager", "fwd")):
            if key in by_key:
                t = by_key[key]
                dev = r["device"].split("device:")[-1]
                rows.append((f"{r['case']} [{dev}, {key[0]} {key[1]}]", t["ratio"]["median"],
                             t.get("bar")))
                break
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, max(3, 0.32 * len(rows) + 1.5)), dpi=110)
    names = [r[0] for r in rows]
    vals = [r[1] for r in rows]
    colors = ["tab:red" if (b is not None and v > b) else "tab:blue" for _, v, b in rows]
    ax.barh(range(len(rows)), vals, color=colors)
    for i, (_, _, b) in enumerate(rows):
        if b is not None:
            ax.plot([b, b], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="gray", linestyle="--", label="1.0x (same cost as baseline)")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio safeops / baseline (graph mode unless marked; black tick = the issue's bar, "
                  "red = over it)")
    ax.set_title("Overhead per op")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_plots(output_dir, results, sweeps=()):
    """Write overhead.png and one PNG per sweep; return their paths."""
    try:
        plt = _plt()
    except ImportError:  # the `bench` extra is not installed
        return []
    paths = []
    path = os.path.join(output_dir, "overhead.png")
    if _plot_overhead(plt, results, path):
        paths.append(path)
    for sweep in sweeps:
        if sweep.get("error"):
            continue
        path = os.path.join(output_dir, f"{sweep['name']}.png")
        _plot_sweep(plt, sweep, path)
        paths.append(path)
    return paths
