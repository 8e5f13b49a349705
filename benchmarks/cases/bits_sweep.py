"""Bits of error per special function (bar charts, float32 and float64): naive formula,
TF's (or TFP's) op, safeops. Measured by `benchmarks.bits_of_error.measure`. Where TF has
no such op the value is None: drawn as no bar and shown as "-" in the report's table."""

from benchmarks.registry import Sweep, pick, register_sweep


def _run(dtype):
    def run(size, seed):
        from benchmarks.bits_of_error import SPECS, measure

        n = pick(size, full=10000, quick=2000, smoke=100)
        series = {"naive formula": [], "TF / TFP op": [], "safeops": []}
        names = list(SPECS)
        for name in names:
            r = measure(name, dtype, n, seed=seed)
            for label, key in (("naive formula", "naive"), ("TF / TFP op", "tf"),
                               ("safeops", "safeops")):
                series[label].append(None if r[key] is None else r[key][0])
        # a missing TF op stays None: no bar in the chart, "-" in the table (0 would read
        # as "perfect")
        return {"categories": names, "series": series}

    return run


for _dtype in ("float32", "float64"):
    register_sweep(Sweep(
        name=f"bits_of_error_{_dtype}", family="special",
        title=f"Mean bits of error per op, {_dtype} (Herbie's metric vs mpmath; lower is better)",
        xlabel="op", ylabel="mean bits of error", run=_run(_dtype), log_x=False, log_y=False,
        kind="bar"))
