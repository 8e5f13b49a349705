"""PNG plots of a benchmark run: accuracy sweeps and the overhead-ratio bar chart."""

import os

__all__ = ["overhead_figure", "write_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark(fig, banner):
    """Stamp a run's status (smoke run, unreliable timings) across the figure."""
    if not banner:
        return
    text = "\n".join(line.split(":")[0] for line in banner)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=28, color="tab:red",
             alpha=0.25, rotation=20, weight="bold")


def _plot_sweep(plt, sweep, path, banner=()):
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
    ax.set_title(sweep["title"] + ("\n" + banner[0].split(";")[0] if banner else ""),
                 fontsize=10 if banner else None)
    ax.set_xlabel(sweep["xlabel"])
    ax.set_ylabel(sweep["ylabel"])
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _mark(fig, banner)
    fig.savefig(path)
    plt.close(fig)


_COLORS = {"met": "tab:blue", "missed": "tab:red", "none": "tab:gray"}


def overhead_figure(plt, results, banner=(), judged=True):
    """The overhead bar chart (one bar per case) as a matplotlib figure, or None."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = []
    for r in results:
        # one bar per case: graph fwd+bwd, else graph fwd, else eager (Python-level cases)
        by_key = {(t["mode"], t["direction"]): t for t in r["timings"] if "ratio" in t}
        for key in (("graph", "fwd+bwd"), ("graph", "fwd"), ("eager", "fwd")):
            if key in by_key:
                t = by_key[key]
                dev = r["device"].split("device:")[-1]
                state = ("met" if t.get("meets_bar") else "missed") if "meets_bar" in t \
                    else "none"
                rows.append((f"{r['case']} [{dev}, {key[0]} {key[1]}]", t["ratio"]["median"],
                             t.get("bar"), state))
                break
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(11, max(4, 0.3 * len(rows) + 2.2)), dpi=110)
    ax.barh(range(len(rows)), [r[1] for r in rows], color=[_COLORS[r[3]] for r in rows])
    for i, (_, _, b, _) in enumerate(rows):
        if b is not None:
            ax.plot([b, b], [i - 0.4, i + 0.4], color="black", linewidth=2, zorder=4)
    ax.axvline(1.0, color="dimgray", linestyle="--", zorder=3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("time ratio safeops / baseline\n(median of pairwise ratios; graph mode "
                  "fwd+bwd where measured, else graph fwd, else eager)", fontsize=9)
    title = "Overhead per op"
    if banner:
        title += "\n" + "\n".join(line.split(";")[0].split(". ")[0] for line in banner)
    ax.set_title(title, fontsize=10)
    handles = [Line2D([0], [0], color="black", linewidth=2, label="target (max ratio)"),
               Line2D([0], [0], color="dimgray", linestyle="--",
                      label="1.0x: same cost as baseline")]
    if judged:
        handles = [Patch(color=_COLORS["met"], label="within its target"),
                   Patch(color=_COLORS["missed"], label="over its target"),
                   Patch(color=_COLORS["none"], label="no target")] + handles
    else:
        handles = [Patch(color=_COLORS["none"], label="not judged (see the report header)")] \
            + handles
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0)
    fig.tight_layout()
    _mark(fig, banner)
    return fig


def _plot_overhead(plt, results, path, banner=(), judged=True):
    fig = overhead_figure(plt, results, banner, judged)
    if fig is None:
        return False
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def write_plots(output_dir, results, sweeps=(), banner=(), judged=True):
    """Write overhead.png and one PNG per sweep; return their paths. `banner`: the report's
    status lines (smoke run, unreliable timings), stamped on every plot; `judged`: whether
    the run judged its targets (else the bars are not coloured as met / over)."""
    try:
        plt = _plt()
    except ImportError:  # the `bench` extra is not installed
        return []
    paths = []
    path = os.path.join(output_dir, "overhead.png")
    if _plot_overhead(plt, results, path, banner, judged):
        paths.append(path)
    for sweep in sweeps:
        if sweep.get("error"):
            continue
        path = os.path.join(output_dir, f"{sweep['name']}.png")
        # accuracy sweeps do not depend on the timings: only the smoke mark applies
        _plot_sweep(plt, sweep, path, [b for b in banner if b.startswith("SMOKE")])
        paths.append(path)
    return paths
