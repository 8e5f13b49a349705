"""Entry point: ``python -m benchmarks [--quick|--full|--smoke] [--only=PATTERN] ...``.

On every device: the A/A check, the machine's bandwidth, the selected cases, the bandwidth
and the A/A check again; then the accuracy sweeps; then the report (`benchmarks.report`).
"""

import fnmatch
import hashlib
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small sizes and few repeats (the `make bench` mode).")
flags.DEFINE_bool("full", False, "Full sizes and more repeats.")
flags.DEFINE_bool("smoke", False, "Check the suite runs: tiny sizes, graph (and eager) mode "
                  "only, forward+backward only, one repeat (used by the tests; its timings "
                  "mean nothing).")
flags.DEFINE_string("only", None, "fnmatch pattern(s), comma separated, on case names "
                    "without their size (summation/reduce_sum); a bare word matches as *word*. "
                    "The A/A checks and the bandwidth measurement always run.")
flags.DEFINE_list("devices", None, "Device types to measure (cpu,gpu); default every visible one.")
flags.DEFINE_string("output_dir", "bench-results", "Where results.json and report.md go.")
flags.DEFINE_integer("repeats", None, "Timed rounds per measurement (default 7 quick, 21 full).")
flags.DEFINE_integer("warmup", 2, "Untimed rounds before timing.")
flags.DEFINE_integer("seed", 0, "Seed for every case's inputs.")


def _selected(cases, only):
    """The cases whose name (without its size) matches one of the patterns in `only`."""
    if not only:
        return cases
    pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only.split(",")]
    # "family/op/*" also selects "family/op": a name carries its size only once it has run
    return [c for c in cases
            if any(fnmatch.fnmatch(c.name, p) or fnmatch.fnmatch(c.name + "/", p) for p in pats)]


def _input_digest(inputs):
    """A short hash of a case's inputs (the tests check that --seed changes them)."""
    h = hashlib.sha1()
    for x in inputs:
        a = np.asarray(x)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _devices(tf, wanted):
    """The visible CPU/GPU logical devices of the wanted types; UsageError if one is missing."""
    visible = [d for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]
    if not wanted:
        return visible
    wanted = [w.strip().lower() for w in wanted if w.strip()]
    for w in wanted:
        if w not in ("cpu", "gpu"):
            raise app.UsageError(f"--devices: unknown device type {w!r} (use cpu, gpu)")
        if not any(d.device_type.lower() == w for d in visible):
            raise app.UsageError(
                f"--devices={w}: no {w.upper()} device is visible to TensorFlow "
                f"(tf.config.list_logical_devices() shows: "
                f"{', '.join(d.name for d in visible) or 'none'}); nothing measured")
    return [d for d in visible if d.device_type.lower() in wanted]


def _fused_kernels(safeops):
    """Whether safeops' fused C++ kernels run in this process (built now, before any timing)."""
    lib = safeops.native.library()
    st = safeops.native.status()
    if lib is not None:
        return f"loaded ({st['path']})"
    return "disabled (SAFEOPS_NATIVE=0)" if not st["enabled"] else f"unavailable: {st['error']}"


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv):
    del argv
    import tensorflow as tf

    if sum([FLAGS.quick, FLAGS.full, FLAGS.smoke]) > 1:
        raise app.UsageError("--quick, --full and --smoke exclude each other")
    size = "smoke" if FLAGS.smoke else "full" if FLAGS.full else "quick"
    repeats = FLAGS.repeats or {"smoke": 1, "quick": 7, "full": 21}[size]
    if repeats < 1:
        raise app.UsageError("--repeats must be >= 1")
    warmup = 0 if FLAGS.smoke else FLAGS.warmup
    devices = _devices(tf, FLAGS.devices)  # before the (slow) case imports: fail fast
    tf.config.experimental.enable_tensor_float_32_execution(False)

    import safeops
    from benchmarks import harness, report
    from benchmarks.registry import cases, size_label, sweeps
    import benchmarks.cases  # noqa: F401  (registers every family)

    selected = [c for c in _selected(cases(), FLAGS.only) if c.quick or size == "full"]
    selected_sweeps = _selected(sweeps(), FLAGS.only)
    aa_only = bool(_selected([harness.AA_CASE], FLAGS.only)) if FLAGS.only else False
    if FLAGS.only and not selected and not selected_sweeps and not aa_only:
        raise app.UsageError(f"--only={FLAGS.only} matches no case and no sweep")
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": _commit(),
        "mode": size,
        "repeats": repeats,
        "warmup": warmup,
        "seed": FLAGS.seed,
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__,
        "numpy": np.__version__,
        "safeops": safeops.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": [d.name for d in devices],
        "tensor_float_32": "disabled while measuring",
        "fused_kernels": _fused_kernels(safeops),
        "command": " ".join(["python -m benchmarks"] + sys.argv[1:]),
    }
    print(f"safeops benchmarks ({header['mode']}): {len(selected)} cases x {len(devices)} device(s); "
          f"TF {tf.__version__}, TF32 disabled; fused kernels {header['fused_kernels']}", flush=True)
    results, aa_checks, bandwidth = [], [], {}
    start = time.time()
    total = (len(selected) + 2) * len(devices)
    done = 0

    def run_case(case, device, position=None):
        nonlocal done
        t0 = time.time()
        rng = np.random.default_rng(FLAGS.seed)
        digest, label = None, "?"
        try:
            inputs = case.make_inputs(rng, size)
            digest = _input_digest(inputs)
            label = (case.size_label or size_label)(inputs)
            measured = harness.measure_case(
                case, inputs, device, repeats, warmup,
                modes=("graph", "eager") if FLAGS.smoke else None,
                last_direction_only=FLAGS.smoke)
        except Exception as err:  # one broken case must not sink the report
            measured = {"timings": [], "accuracy": None,
                        "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        done += 1
        elapsed = time.time() - start
        eta = elapsed / done * (total - done)
        result = {"case": f"{case.name}/{label}", "family": case.family, "device": device.name,
                  "baseline_name": case.baseline_name, "candidate_name": case.candidate_name,
                  "bar_source": case.bar_source or "none stated", "inputs_sha1": digest,
                  "targets": {"ratio": dict(case.bar), "seconds": dict(case.bar_s),
                              "limit": dict(case.bar_limit)},
                  "extra": {k: str(v) for k, v in case.extra.items()}, **measured}
        if position:
            result["position"] = position
        print(report.progress_line(result, done, total, time.time() - t0, elapsed, eta)
              + (f" [A/A check, {position}]" if position else ""), flush=True)
        return result

    def run_bandwidth(device, position):
        t0 = time.time()
        try:
            bw = harness.measure_bandwidth(device, size, repeats, warmup)
        except Exception as err:  # reported, not fatal
            bw = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(f"[bandwidth, {position}] {device.name.split('device:')[-1]}: " + ", ".join(
            f"{k} {bw[k]['gbps']:.1f} GB/s" if "gbps" in bw.get(k, {}) else f"{k} failed"
            for k in ("copy", "read")) + f" ({time.time() - t0:.1f} s)", flush=True)
        return bw

    # Files written just before (an install, a kernel build) are still being written back
    # to disk for several seconds, and that traffic lowered the first bandwidth measurement
    # by 10-20% in fresh clones: wait for it before the first clock is read.
    if hasattr(os, "sync"):
        os.sync()
    for device in devices:
        aa_checks.append(run_case(harness.AA_CASE, device, "first"))
        bw_first = run_bandwidth(device, "first")
        for case in selected:
            results.append(run_case(case, device))
        # measured again at the end: a limit lowered by a load during one run is not kept
        bandwidth[device.name] = report.combine_bandwidth(bw_first,
                                                          run_bandwidth(device, "last"))
        aa_checks.append(run_case(harness.AA_CASE, device, "last"))
    sweep_results = []
    for sw in selected_sweeps:
        t0 = time.time()
        entry = {"name": sw.name, "family": sw.family, "title": sw.title, "xlabel": sw.xlabel,
                 "ylabel": sw.ylabel, "log_x": sw.log_x, "log_y": sw.log_y, "kind": sw.kind}
        try:
            entry["data"] = sw.run(size, FLAGS.seed)
        except Exception as err:
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        sweep_results.append(entry)
        print(f"[sweep] {sw.name}: {'ERROR ' + entry['error'] if 'error' in entry else 'ok'} "
              f"({time.time() - t0:.1f} s; elapsed {time.time() - start:.0f} s)", flush=True)
    header = report.finalize_header(header, aa_checks, bandwidth)
    out = report.write(FLAGS.output_dir, header, results, sweep_results, aa_checks, bandwidth)
    print(report.markdown_table(results))
    for line in report.status_banner(header):
        print(line)
    print(f"wrote {', '.join(out)} in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    app.run(main)
