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
            _need(t.get("mode") in ("graph", "xla"), f"bad mode in {r['case']}")
            _need(t.get("direction") in ("fwd", "fwd+bwd"), f"bad direction in {r['case']}")
            if "error" in t:
                continue
            for side in ("baseline", "safeops"):
                for k in _SUMMARY_KEYS:
                    v = t[side][k]
                    _need(isinstance(v, float) and v > 0, f"{r['case']}: {side}.{k} = {v!r}")
            for k in ("median", "min", "max"):
                _need(t["ratio"][k] > 0, f"{r['case']}: ratio.{k}")
        acc = r["accuracy"]
        _need(acc is None or (isinstance(acc, dict) and "metric" in acc),
              f"{r['case']}: accuracy must be null or have a metric")
    _need(isinstance(doc.get("sweeps"), list), "sweeps must be a list")
    for sw in doc["sweeps"]:
        _need("name" in sw and ("data" in sw or "error" in sw), f"bad sweep {sw.get('name')}")
        if "data" in sw:
            _need("series" in sw["data"], f"sweep {sw['name']} lacks series")
    return True
