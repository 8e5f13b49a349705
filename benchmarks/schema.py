"""Validation of results.json (schema 2, documented in benchmarks/README.md)."""

__all__ = ["validate"]

_HEADER_KEYS = ("date", "commit", "mode", "repeats", "tensorflow", "keras", "devices",
                "tensor_float_32", "command", "timings_reliable", "timings_unreliable_because",
                "bars_judged", "bars_not_judged_because")
_SUMMARY_KEYS = ("median_s", "min_s", "max_s")


def _need(cond, msg):
    if not cond:
        raise ValueError(f"results.json: {msg}")


def _bandwidth(doc):
    bw = doc.get("bandwidth")
    _need(isinstance(bw, dict), "bandwidth must be an object (device -> measurement)")
    for device, m in bw.items():
        for kind in ("copy", "read"):
            k = m.get(kind)
            if k is None or "error" in k:
                continue
            _need(isinstance(k.get("gbps"), float) and k["gbps"] > 0,
                  f"bandwidth {device} {kind}: gbps = {k.get('gbps')!r}")


def validate(doc):
    """Raise ValueError unless `doc` (the parsed results.json) follows schema 2."""
    _need(isinstance(doc, dict) and doc.get("schema") == 2, "top level must have schema == 2")
    header = doc.get("header")
    _need(isinstance(header, dict), "missing header")
    for k in _HEADER_KEYS:
        _need(k in header, f"header lacks {k!r}")
    judged = header["bars_judged"]
    _need(isinstance(judged, bool) and isinstance(header["timings_reliable"], bool),
          "bars_judged and timings_reliable must be booleans")
    _need(not judged or (header["timings_reliable"] and header["mode"] != "smoke"),
          "targets judged in a smoke run or with failed A/A checks")
    _need(header["timings_reliable"] == (not header["timings_unreliable_because"]),
          "timings_reliable must agree with timings_unreliable_because")
    _need(header.get("limits_reliable", True) == (not header.get("limits_unreliable_because")),
          "limits_reliable must agree with limits_unreliable_because")
    _need(isinstance(doc.get("aa_checks"), list), "aa_checks must be a list")
    _need(sorted(r.get("position") for r in doc["aa_checks"])
          == sorted(["first", "last"] * len(header["devices"])),
          "an A/A check must run first and last on every device")
    _bandwidth(doc)
    _need(isinstance(doc.get("results"), list), "results must be a list")
    for r in doc["aa_checks"] + doc["results"]:
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
            if judged and ("bar" in t or "bar_s" in t):
                _need(isinstance(t.get("meets_bar"), bool), f"{r['case']}: bar without meets_bar")
            limits_judged = judged and header.get("limits_reliable", True)
            if limits_judged and "bar_limit" in t:
                _need(isinstance(t.get("meets_bar_limit"), bool),
                      f"{r['case']}: bar_limit without meets_bar_limit")
            _need(limits_judged or "meets_bar_limit" not in t,
                  f"{r['case']}: a distance-from-limit target judged with unstable bandwidth")
            _need(judged or ("meets_bar" not in t and "meets_bar_limit" not in t),
                  f"{r['case']}: a target judged in a run that judges none")
            if "bandwidth" in t:
                _need(isinstance(t.get("bytes"), dict) and t["bandwidth"]["safeops_gbps"] > 0,
                      f"{r['case']}: bandwidth without bytes")
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
