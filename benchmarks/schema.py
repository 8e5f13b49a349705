"""Validation of results.json (schema 1, documented in benchmarks/README.md)."""

__all__ = ["validate"]

_HEADER_KEYS = ("date", "commit", "mode", "repeats", "tensorflow", "keras", "devices",
                "tensor_float_32", "command")
_SUMMARY_KEYS = ("median_s", "min_s", "max_s")


def _need(cond, msg):
    if not cond:
        raise ValueError(f"results.json: {msg}")


def validate(doc):
    """Raise ValueError unless `doc` (the parsed results.json) follows schema 1."""
    _need(isinstance(doc, dict) and doc.get("schema") == 1, "top level must have schema == 1")
    header = doc.get("header")
    _need(isinstance(header, dict), "missing header")
    for k in _HEADER_KEYS:
        _need(k in header, f"header lacks {k!r}")
    _need(isinstance(doc.get("results"), list), "results must be a list")
    for r in doc["results"]:
        for k in ("case", "family", "device", "timings", "accuracy"):
            _need(k in r, f"result lacks {k!r}: {r.get('case')}")
        for t in r["timings"]:
            _need(t.get("mode") in ("graph", "xla", "eager"), f"bad mode in {r['case']}")
            _need(t.get("direction") in ("fwd", "fwd+bwd"), f"bad direction in {r['case']}")
            if "error" in t:
                _need(isinstance(t["error"], str), f"{r['case']}: error must be a string")
                continue
            sides = ("baseline", "safeops") if "baseline" in t else ("safeops",)
            _need("baseline" in t or "bar_s" in t or "ratio" not in t,
                  f"{r['case']}: a ratio needs a baseline")
            for side in sides + tuple(t.get("anchors", {})):
                summary = t[side] if side in sides else t["anchors"][side]
                for k in _SUMMARY_KEYS:
                    v = summary[k]
                    _need(isinstance(v, float) and v > 0, f"{r['case']}: {side}.{k} = {v!r}")
            if "baseline" in t:
                for k in ("median", "min", "max"):
                    _need(t["ratio"][k] > 0, f"{r['case']}: ratio.{k}")
            if "bar" in t or "bar_s" in t:
                _need(isinstance(t.get("meets_bar"), bool), f"{r['case']}: bar without meets_bar")
        acc = r["accuracy"]
        _need(acc is None or (isinstance(acc, dict) and "metric" in acc),
              f"{r['case']}: accuracy must be null or have a metric")
    _need(isinstance(doc.get("sweeps"), list), "sweeps must be a list")
    for sw in doc["sweeps"]:
        _need("name" in sw and ("data" in sw or "error" in sw), f"bad sweep {sw.get('name')}")
        if "data" in sw:
            _need("series" in sw["data"], f"sweep {sw['name']} lacks series")
            n = len(sw["data"].get("x", sw["data"].get("categories", [])))
            for label, ys in sw["data"]["series"].items():
                _need(len(ys) == n, f"sweep {sw['name']}: series {label!r} has {len(ys)} "
                                    f"values for {n} points")
                _need(all(y is None or isinstance(y, (int, float)) for y in ys),
                      f"sweep {sw['name']}: series {label!r} values must be numbers or null")
    return True
