"""Bits of error per special function (bar charts, float32 and float64): naive formula,
TF's (or TFP's) op, safeops. Measured by `benchmarks.bits_of_error.measure`."""

from benchmarks.registry import Sweep, register_sweep


def _run(dtype):
    def run(quick):
        from benchmarks.bits_of_error import SPECS, measure

        n = 300 if quick == "smoke" else 2000 if quick else 10000
        series = {"naive formula": [], "TF / TFP op": [], "safeops": []}
        names = list(SPECS)
        for name in names:
            r = measure(name, dtype, n)
            for label, key in (("naive formula", "naive"), ("TF / TFP op", "tf"),
                               ("safeops", "safeops")):
                series[label].append(None if r[key] is None else r[key][0])
        # a missing TF op is drawn as 0-height bar and shown as "-" in the table
        series = {k: [0.0 if v is None else v for v in vs] for k, vs in series.items()}
        return {"categories": names, "series": series}

    return run


for _dtype in ("float32", "float64"):
    register_sweep(Sweep(
        name=f"bits_of_error_{_dtype}", family="special",
        title=f"Mean bits of error per op, {_dtype} (Herbie's metric vs mpmath; lower is better)",
        xlabel="op", ylabel="mean bits of error", run=_run(_dtype), log_x=False, log_y=False,
        kind="bar"))
