"""Benchmark: the tutorial's loop against the project's, side by side, in one process, on one device.

Every variant (loop x norm) is a run of ``epochs`` epochs; the runs advance one epoch at a time in turn
(round robin), so a slow spell on a shared machine hits all of them alike. Per run it reports:

- examples/sec on the tutorial's definition (training steps only, data fetching and evaluation left out):
  the median over epochs 2..N (epoch 1 is the warm-up: compile, caches), and the tutorial's own figure
  (all examples / all step time, epoch 1 and any compile included);
- end-to-end seconds: process start-up (a fresh interpreter importing torch, torchvision and bn_lenet,
  timed once and added to every run) + the run's setup (data, model) + every epoch (steps, evaluation);
- the final loss, train accuracy and test accuracy, so the speed is seen next to what was trained.

Then the ratios project/tutorial and scratch/built-in (paired by round, see ``ratios``), peak memory,
device, CPU model, threads, versions.
Optionally (``--reproduce``) it also times the real reproduction, ``experiments/reproduce.py``, in a
subprocess (start-up, data, both variants, evaluation, files and plots: the 90-second target).

Output (benchmark_report.py): a table on stdout, ``results/benchmark/<device-kind>.json`` and ``.md``
(``-quick`` for --quick).
"""

import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..training import config as config_mod
from ..training import data as data_mod
from ..training import process
from . import tutorial
from ..network.model import from_config
from ..training.data import num_batches
from ..training.device import resolve_device
from ..training.train import fit, make_optimizer, set_fp32_math, sync, uses_tf32

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL_NORMS = ("scratch", "torch")  # the tutorial's two runs; "none" is not one of them
CONFIGS = {"scratch": "configs/scratch_bn.toml", "torch": "configs/torch_bn.toml", "none": "configs/no_bn.toml"}


# --- the two loops, as runs that advance one epoch per next() -------------------------------------------

def tutorial_run(norm, epochs, limit_batches, device, seed, root=None):
    """The tutorial's loop (bn_lenet.anchors.tutorial): first yields setup seconds, then one row per epoch."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    train_iter, test_iter = tutorial.load_data_fashion_mnist(256, root)
    net = tutorial.lenet(norm)
    yield time.perf_counter() - started
    threads = torch.get_num_threads()
    for row in tutorial.train_epochs(net, train_iter, test_iter, epochs, 1.0, device, limit_batches):
        yield dict(row, threads=threads)


def project_run(cfg, device):
    """The project's loop (train.fit), one epoch per call, exactly as ``bn-lenet run`` trains."""
    started = time.perf_counter()
    data = data_mod.load_dataset(cfg.data.root or None).to(device)
    torch.manual_seed(cfg.train.seed)
    model = from_config(cfg).to(device)
    optimizer = make_optimizer(model, cfg.train.lr)
    n = data.train_labels.shape[0]
    examples = min(n, num_batches(n, cfg.train.batch_size, cfg.train.limit_batches) * cfg.train.batch_size)
    sync(device)
    yield time.perf_counter() - started
    for epoch in range(1, cfg.train.epochs + 1):
        if cfg.train.threads:  # as runs.train_run does before fit
            torch.set_num_threads(cfg.train.threads)
        this = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epoch))
        [s] = fit(model, data, this, optimizer, start_epoch=epoch - 1)
        yield {"epoch": s.epoch, "loss": s.loss, "train_acc": s.train_acc, "test_acc": s.test_acc,
               "examples": examples, "step_seconds": examples / s.examples_per_sec, "seconds": s.seconds,
               "threads": torch.get_num_threads()}


def startup_seconds() -> float:
    """A fresh interpreter importing what a run imports: the start-up every real run pays once."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision, bn_lenet.training.runs"], cwd=ROOT, check=True)
    return time.perf_counter() - t


TORCH_MB = 100  # a Python process that imported torch holds more than this


def time_reproduction(overrides) -> dict:
    """Wall time and peak memory of the real reproduction (both variants, 10 epochs) in a fresh process, and
    its final metrics. On CPU it trains the variants in child processes side by side: the memory is the sum
    of every process's own peak (an upper bound of what they held at once)."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile("w+") as log:
        cmd = [sys.executable, "experiments/reproduce.py", "--quiet", "--out", out]
        for o in overrides:
            cmd += ["--set", o]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        peaks = {}
        while proc.poll() is None:  # high-water marks, read until it exits (ru_maxrss of a child would
            for pid in process_tree(proc.pid):  # include this big parent's, inherited at fork)
                peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
            time.sleep(0.2)
        wall = time.perf_counter() - t
        log.seek(0)
        output = log.read()
        if proc.returncode != 0:
            raise RuntimeError(f"reproduction failed (exit {proc.returncode}):\n{output[-2000:]}")
        results = {}
        for metrics in sorted(Path(out).glob("*/metrics.jsonl")):
            last = json.loads(metrics.read_text().splitlines()[-1])
            results[metrics.parent.name] = {k: last[k] for k in ("loss", "train_acc", "test_acc")}
    # The processes that trained: those that held torch. A short-lived helper (the git call that records a
    # run's commit) is sampled too when the machine is slow; it holds a few MB and is not counted.
    trained = [mb for mb in peaks.values() if mb > TORCH_MB]
    return {"command": " ".join(cmd[1:3] + [f"--set {o}" for o in overrides]), "wall_seconds": wall,
            "peak_rss_mb": sum(trained), "processes": len(trained), "results": results}


def process_tree(pid: int) -> list:
    """pid and its descendants (Linux /proc; just pid elsewhere)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    return tree


def peak_rss_mb(pid) -> float:
    """Linux: the process's peak resident set (VmHWM), 0 where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def profile_time(device: torch.device) -> str:
    """The profiler's per-op time the profile ranks by. On CUDA an op's CPU self time is the time to launch
    its kernels, not to run them: rank by the time its kernels ran on the GPU, ``self_device_time_total``
    (torch 2.14; ``self_cuda_time_total`` is its deprecated alias there, and the only name in older ones)."""
    if device.type != "cuda":
        return "self_cpu_time_total"
    from torch.autograd.profiler_util import FunctionEventAvg
    return "self_device_time_total" if hasattr(FunctionEventAvg(), "self_device_time_total") else \
        "self_cuda_time_total"


def top_ops(events, time_attr: str, steps: int, top: int) -> list:
    """The ``top`` ops by ``time_attr`` (microseconds over ``steps`` steps), as [{op, self_ms_per_step, percent}]
    with the percent of the total of that time over all ops. Ops are the profiler's CPU-side events: on CUDA it
    also lists each kernel as a device event, whose time is already its op's self device time (counting both
    would count it twice)."""
    from torch.autograd import DeviceType
    events = [e for e in events if e.device_type == DeviceType.CPU and getattr(e, time_attr) > 0]
    total = sum(getattr(e, time_attr) for e in events)
    events.sort(key=lambda e: -getattr(e, time_attr))
    return [{"op": e.key, "self_ms_per_step": getattr(e, time_attr) / 1000 / steps,
             "percent": 100 * getattr(e, time_attr) / total} for e in events[:top]]


def profile_step(cfg, device, steps=20, top=12) -> list:
    """torch.profiler over ``steps`` training steps of the project's loop (after a warm-up, which compiles
    when train.compile is set): the ops with the most self time (``profile_time``: on the GPU where there is
    one), as [{op, self_ms_per_step, percent}]."""
    from torch.profiler import ProfilerActivity, profile
    from ..training.step import train_step
    data = data_mod.load_dataset(cfg.data.root or None).to(device)
    torch.manual_seed(cfg.train.seed)
    model = from_config(cfg).to(device)
    optimizer = make_optimizer(model, cfg.train.lr)
    step_model = torch.compile(model) if cfg.train.compile else model
    set_fp32_math(cfg.train.precision, device)  # as fit() does
    bs = cfg.train.batch_size

    def run(k):
        for b in range(k):
            train_step(step_model, optimizer, data_mod.to_float(data.train_images[b * bs:(b + 1) * bs]),
                       data.train_labels[b * bs:(b + 1) * bs], cfg.train.precision)
        sync(device)
    run(3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(steps)
    return top_ops(list(prof.key_averages()), profile_time(device), steps, top)


# --- running and summarizing ---------------------------------------------------------------------------

def loop_settings(overrides, compiled_too: bool, bf16_too: bool, device: torch.device) -> dict:
    """{loop name: config overrides} of the project's loops. Besides "project", for the tutorial's two norms:
    ``compiled_too`` adds ``train.compile=true`` ("project+compile"); on CUDA, "project+graph" has
    ``train.cuda_graph=true`` (the whole step replayed from a CUDA graph; CPU has no graphs); ``bf16_too``
    adds each of these under bf16 autocast ("...+bf16")."""
    settings = {"project": list(overrides)}
    if compiled_too:
        settings["project+compile"] = [*overrides, "train.compile=true"]
    if device.type == "cuda":
        settings["project+graph"] = [*overrides, "train.cuda_graph=true"]
    if bf16_too:
        settings.update({f"{loop}+bf16": [*extra, "train.precision=bf16"] for loop, extra in settings.items()})
    return settings


def run(norms=("scratch", "torch", "none"), epochs=10, limit_batches=0, device="auto", seed=0, overrides=(),
        tutorial_epochs=None, compiled_too=False, bf16_too=False, tutorial_too=True, profile=False, reproduce=False,
        log=print) -> dict:
    """Run every variant round robin; returns the report (see module docstring). The project's loops are
    those of ``loop_settings``."""
    device = resolve_device(device)
    base_threads = torch.get_num_threads()
    settings = loop_settings(overrides, compiled_too, bf16_too, device)
    runs, run_configs = {}, {}
    for norm in norms:
        if tutorial_too and norm in TUTORIAL_NORMS:
            runs[("tutorial", norm)] = tutorial_run(norm, tutorial_epochs or epochs, limit_batches, device, seed)
        for loop, extra in settings.items():
            if loop != "project" and norm not in TUTORIAL_NORMS:
                continue
            cfg = config_mod.resolve(ROOT / CONFIGS[norm], [f"train.epochs={epochs}", f"train.seed={seed}",
                                                            f"train.limit_batches={limit_batches}",
                                                            f"train.device={device}", *extra])
            runs[(loop, norm)], run_configs[(loop, norm)] = project_run(cfg, device), cfg
    startup = startup_seconds()
    rows = {key: {"setup_seconds": None, "epochs": []} for key in runs}
    for epoch in range(max(epochs, tutorial_epochs or 0) + 1):  # step 0 is the setup
        for key, gen in runs.items():
            torch.set_num_threads(base_threads)  # each loop applies its own thread setting, if any
            if key[0] == "tutorial":  # the project's loops set their own (fit); the tutorial's is fp32 too
                set_fp32_math("fp32", device)
            out = next(gen, None)
            if out is None:  # this run has done its epochs
                continue
            if epoch == 0:
                rows[key]["setup_seconds"] = out
            else:
                rows[key]["epochs"].append(out)
                log(f"  epoch {epoch} {key[0]:20} {key[1]:7} "
                    f"{out['examples'] / out['step_seconds']:9,.0f} examples/sec  {out['seconds']:6.1f} s")
    variants = [summarize(loop, norm, r, startup) for (loop, norm), r in rows.items()]
    for v in variants:  # TF32 math on the GPU: only a project loop with train.precision = "tf32"
        cfg = run_configs.get((v["loop"], v["norm"]))
        v["tf32"] = uses_tf32(cfg.train.precision if cfg else "fp32", device)
    report = {"epochs": epochs, "limit_batches": limit_batches, "startup_seconds": startup,
              "variants": variants, "ratios": ratios(variants),
              "memory": {"method": "peak RSS (ru_maxrss) of the whole benchmark process, every run together: "
                                   "runs sharing one process cannot be told apart by RSS (freed memory is kept)",
                         "benchmark_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
    if device.type == "cuda":
        report["memory"]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if profile:
        log("  profiling the project's step ...")
        # profile_step times eager or compiled steps: a graph's replay is one launch, not an op table
        report["profile_time"] = profile_time(device)
        report["profiles"] = {f"{loop} {norm}": profile_step(run_configs[(loop, norm)], device)
                              for loop, norm in run_configs
                              if norm in TUTORIAL_NORMS and not run_configs[(loop, norm)].train.cuda_graph}
    if reproduce:
        log("  timing the full reproduction (experiments/reproduce.py) in a fresh process ...")
        report["reproduction"] = time_reproduction(list(overrides))
    return report


def summarize(loop, norm, r, startup) -> dict:
    eps = r["epochs"]
    per_epoch = [e["examples"] / e["step_seconds"] for e in eps]
    last = eps[-1]
    return {"loop": loop, "norm": norm, "threads": last["threads"],
            # epoch 1 warms up (compile, DataLoader, allocator, caches): the median is over the rest
            "examples_per_sec": statistics.median(per_epoch[1:] or per_epoch),
            "examples_per_sec_whole_run": sum(e["examples"] for e in eps) / sum(e["step_seconds"] for e in eps),
            "examples_per_sec_per_epoch": per_epoch,
            "setup_seconds": r["setup_seconds"], "epoch_seconds": [e["seconds"] for e in eps],
            "epochs": len(eps),
            "end_to_end_seconds": startup + r["setup_seconds"] + sum(e["seconds"] for e in eps),
            "loss": last["loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"]}


def ratios(variants) -> dict:
    """project/tutorial per norm and scratch/torch per loop, each paired by round: the median over the rounds
    both runs measured (epochs 2.. they share) of the ratio of their examples/sec in that round. Runs advance
    in turn, so a round's two epochs ran minutes apart at most; pairing cancels the machine's slow and fast
    spells, which a ratio of medians over different rounds (the tutorial runs fewer epochs) does not."""
    rate = {(v["loop"], v["norm"]): v["examples_per_sec_per_epoch"] for v in variants}
    loops = list(dict.fromkeys(v["loop"] for v in variants))

    def paired(a, b):
        shared = min(len(rate[a]), len(rate[b]))
        first = 1 if shared > 1 else 0  # epoch 1 warms up
        return statistics.median(x / y for x, y in zip(rate[a][first:shared], rate[b][first:shared]))

    out = {}
    for loop in loops:
        for norm in TUTORIAL_NORMS:
            if loop != "tutorial" and (loop, norm) in rate and ("tutorial", norm) in rate:
                out[f"{loop}/tutorial {norm}"] = paired((loop, norm), ("tutorial", norm))
    for loop in loops:
        if (loop, "scratch") in rate and (loop, "torch") in rate:
            out[f"scratch/torch {loop}"] = paired((loop, "scratch"), (loop, "torch"))
    return out


# --- command line -------------------------------------------------------------------------------------

@contextlib.contextmanager
def cold_inductor_cache(cold: bool):
    """A fresh, empty inductor cache while the benchmark runs (inductor reads the variable lazily, and the
    reproduction's subprocess inherits it), so compile times are those of a first run."""
    if not cold:
        yield
        return
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as fresh:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
        try:
            yield
        finally:
            if saved is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def add_arguments(p) -> None:
    """The benchmark's options (shared by ``bn-lenet benchmark`` and ``experiments/benchmark.py``)."""
    import argparse
    p.add_argument("--quick", action="store_true", help="a check in seconds: 2 epochs of 20 batches, no "
                   "reproduction; writes <device-kind>-quick.json/.md")
    p.add_argument("--epochs", type=int, help="epochs per run (default 10; --quick: 2)")
    p.add_argument("--tutorial-epochs", type=int, help="epochs of the tutorial's runs (default 5, the slowest "
                   "rows: 1 warm-up + 4 measured; --quick: as --epochs)")
    p.add_argument("--batches", type=int, help="batches per epoch, 0 = all (default 0; --quick: 20)")
    p.add_argument("--norms", default="scratch,torch,none", help="comma-separated (default scratch,torch,none)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for the project's runs, e.g. --set train.compile=true (repeatable)")
    p.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the project's loop with train.compile=true for scratch and torch (default: on, "
                   "off with --quick)")
    p.add_argument("--bf16", action="store_true",
                   help="also run the project's loops under bf16 autocast (train.precision=bf16), for speed and "
                   "accuracy next to fp32")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.profiler's top ops of the project's step, per norm and setting (default: on, off "
                   "with --quick)")
    p.add_argument("--tutorial", action=argparse.BooleanOptionalAction, default=True,
                   help="run the tutorial's loop too (default: on)")
    p.add_argument("--cold-compile", action=argparse.BooleanOptionalAction, default=True,
                   help="compile into a fresh, empty inductor cache, as a first run on a new machine does "
                   "(default: on); --no-cold-compile uses the usual cache, as later runs do")
    p.add_argument("--tag", default="", help="suffix for the output files, e.g. bf16 -> cpu-bf16.json")
    p.add_argument("--reproduce", action=argparse.BooleanOptionalAction, default=None,
                   help="also time experiments/reproduce.py in a fresh process (default: on, off with --quick)")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmark"), help="output folder")


def run_from_args(args, command: str) -> int:
    from . import benchmark_report
    from ..errors import UserError
    from ..training.provenance import environment
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    if not norms or any(n not in CONFIGS for n in norms):
        raise UserError(f"--norms {args.norms!r}: give a comma-separated list of {', '.join(CONFIGS)}")
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else 10)
    batches = args.batches if args.batches is not None else (20 if args.quick else 0)
    tutorial_epochs = args.tutorial_epochs if args.tutorial_epochs is not None else (epochs if args.quick else 5)
    if epochs < 1 or tutorial_epochs < 1 or batches < 0:
        raise UserError("--epochs and --tutorial-epochs must be >= 1, --batches >= 0 (0 = all)")
    reproduce = args.reproduce if args.reproduce is not None else not args.quick
    compiled_too = args.compiled if args.compiled is not None else not args.quick
    device = resolve_device(args.device)
    # The benchmark's process trains (both loops, one after the other): on CPU, glibc keeps the memory each
    # step frees (process-wide: ~1,000 fewer page faults per step, the same numbers; bn_lenet/training/process.py).
    process.keep_freed_memory(device.type)
    env = environment(device)  # before the runs: the code that runs is the code this names
    started, t0, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter(), os.getloadavg()
    with cold_inductor_cache(args.cold_compile):
        report = run(norms, epochs, batches, args.device, overrides=args.overrides,
                     tutorial_epochs=tutorial_epochs, compiled_too=compiled_too,
                     bf16_too=args.bf16, tutorial_too=args.tutorial,
                     profile=args.profile if args.profile is not None else not args.quick, reproduce=reproduce)
    report.update(command=command, started=started, wall_seconds=time.perf_counter() - t0,
                  quick=bool(args.quick or batches), cold_compile=args.cold_compile, overrides=args.overrides,
                  load_average={"before": load_before, "after": os.getloadavg()},
                  environment=env)
    print(benchmark_report.table(report))
    stem = benchmark_report.device_kind(device) + (f"-{args.tag}" if args.tag else "") + \
        ("-quick" if report["quick"] else "")
    paths = benchmark_report.write(report, Path(args.out), stem)
    print(f"wrote {' and '.join(str(p) for p in paths)}")
    return 0
