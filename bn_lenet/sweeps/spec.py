"""A sweep's spec: which config, which fixed overrides, which points (a grid and/or a list), which seeds.

A spec file ``configs/sweeps/NAME.toml`` (the sweep's name is the file stem)::

    question = "one paragraph: what this sweep answers"
    title = "heading of the report"         # optional; default "Sweep NAME"; {seeds}: the number of seeds
    config = "configs/scratch_bn.toml"     # optional base config; default: the config defaults
    seeds = 3                              # seeds 0..2, or an explicit list: seeds = [0, 4]
    [set]                                  # fixed overrides for every run
    "train.epochs" = 10
    [grid]                                 # the product of these keys, in this order
    "model.norm" = ["none", "scratch"]
    "train.lr" = [0.1, 1, 10]
    [zip]                                  # keys whose values advance together: one more axis of the product
    "train.batch_size" = [16, 256]
    "train.lr" = [0.0625, 1]
    [[points]]                             # and/or explicit points (where a product makes no sense)
    "model.norm" = "torch"
    set = { "eval.precise_bn" = true }     # a point's own overrides, not part of its id
    [[when]]                               # overrides for every point with these values (not part of its id)
    "model.norm" = "scratch"
    set = { "eval.batch_stats" = true }
    [report]                               # the analysis, as data: bn_lenet/sweeps/report_spec.py
    lead = ["test_acc", "loss"]

Keys are config keys ``section.key``, quoted or as TOML dotted keys; values are TOML values, exactly what
``--set`` takes. The ad-hoc form ``bn-lenet sweep CONFIG --grid KEY=V1,V2 --seeds N`` builds the same spec.
Everything here is checked before anything is written: see ``resolve_runs``.
"""

import json
import math
import re
from itertools import product
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..training import config as config_mod
from ..errors import ConfigError, UserError
from . import report_spec

MAX_RUNS = 10_000  # more runs than this need --max-runs N: a typo (seeds = 1000 on a big grid) is refused at once
SPEC_KEYS = ("question", "title", "config", "seeds", "set", "grid", "zip", "points", "when", "report")


# --- values as TOML literals and as parts of a directory name ------------------------------------------

def toml_literal(value) -> str:
    """A value as the TOML text ``--set`` parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise UserError(f"{value!r} is not a config value (a string, number, boolean or list)")


def parse_value(text: str):
    """One value as ``--set`` reads it: a TOML literal, else the bare word as a string."""
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def split_values(text: str) -> list:
    """``V1,V2,...`` at the commas outside brackets and quotes (so ``[1,2],[3]`` is two lists)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [parse_value(item) for item in items if item.strip()]


def id_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(id_value(v) for v in value) if value else "empty"
    return str(value)


def point_ids(points: list) -> list:
    """Readable directory names: ``norm=scratch,lr=0.03`` (the leaf of each key; the full key where two
    keys share a leaf); ``base`` for a point with no keys."""
    keys = list(dict.fromkeys(k for p in points for k in p["values"]))
    leaves = [k.rpartition(".")[2] for k in keys]
    name = {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves)}
    ids = [",".join(f"{name[k]}={id_value(v)}" for k, v in p["values"].items()) or "base" for p in points]
    return [re.sub(r"[^A-Za-z0-9._=+,-]", "-", i) for i in ids]


# --- reading a spec ---------------------------------------------------------------------------------------

def _flat(table, where: str) -> dict:
    """{"train.lr": 0.1} from either {"train.lr": 0.1} or the dotted-key form {"train": {"lr": 0.1}}."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table of section.key = value, got {table!r}")
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in _flat(value, where).items()})
        else:
            flat[key] = value
    return flat


def read_toml(path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found (the shipped sweep specs are in configs/sweeps/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}; give a TOML sweep spec "
                        f"such as configs/sweeps/example.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML: {e}; fix the file (see configs/sweeps/ for examples)") from None


def is_config(d: dict) -> bool:
    """A run config (sections such as [model], [train]) rather than a sweep spec."""
    return bool(d) and not set(d) & set(SPEC_KEYS) and set(d) <= set(config_mod.SECTIONS)


def find_config(name: str, spec_path: Path) -> str:
    """A spec's ``config`` path: as given (absolute, or relative to the current directory), else relative
    to the first folder above the spec that has it (the repo root for configs/sweeps/NAME.toml)."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return str(path)
    for parent in spec_path.resolve().parents:
        if (parent / path).exists():
            return str(parent / path)
    raise UserError(f"{spec_path}: config = {name!r} not found (relative paths are read from the current "
                    f"directory or the repo root)")


def spec_from_file(path) -> dict:
    path = Path(path)
    d = read_toml(path)
    where = str(path)
    unknown = [k for k in d if k not in SPEC_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a sweep spec has {', '.join(SPEC_KEYS)}")
    report = report_spec.read(d.get("report", {}), where)
    grid = _flat(d["grid"], f"{where}: [grid]") if "grid" in d else None
    if grid == {}:
        raise UserError(f"{where}: the [grid] is empty; give each key a list of values, e.g. \"train.lr\" = [0.1, 1]")
    zipped = _flat(d["zip"], f"{where}: [zip]") if "zip" in d else {}
    lengths = {len(v) if isinstance(v, list) else -1 for v in zipped.values()}
    if zipped and (len(lengths) != 1 or min(lengths) < 1):
        raise UserError(f"{where}: [zip] needs lists of one length (the values advance together), got {zipped!r}")
    if set(zipped) & set(grid or {}):
        raise UserError(f"{where}: {', '.join(sorted(set(zipped) & set(grid)))} is in both [grid] and [zip]: keep one")
    explicit, when = (_tables(d.get(name, []), name, where) for name in ("points", "when"))
    config = d.get("config")
    if config is not None and not isinstance(config, str):
        raise UserError(f"{where}: config must be a path string, got {config!r}")
    return check_spec({
        "name": path.stem, "spec_file": str(path), "question": d.get("question", ""), "title": d.get("title", ""),
        "config": find_config(config, path) if config else None, "seeds": d.get("seeds", 1),
        "set": _flat(d.get("set", {}), f"{where}: [set]"), "grid": grid or {}, "zip": zipped, "points": explicit,
        "when": when, "report": report})


def _tables(tables, name: str, where: str) -> list:
    """[[points]] or [[when]]: each {"values": its keys, "set": its own overrides}."""
    if not isinstance(tables, list) or not all(isinstance(p, dict) for p in tables):
        raise UserError(f"{where}: {name} must be [[{name}]] tables of section.key = value")
    return [{"values": _flat({k: v for k, v in p.items() if k != "set"}, f"{where}: [[{name}]] {i}"),
             "set": _flat(p.get("set", {}), f"{where}: [[{name}]] {i}'s set")} for i, p in enumerate(tables, 1)]


def spec_from_args(config: str, grid_args: list, seeds: int) -> dict:
    """The ad-hoc form: a run config, ``--grid KEY=V1,V2`` (repeatable) and ``--seeds N``."""
    grid = {}
    for item in grid_args:
        key, sep, values = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"bad --grid {item!r}: write it as section.key=V1,V2, e.g. --grid train.lr=0.1,1")
        grid[key.strip()] = split_values(values)
    return check_spec({"name": Path(config).stem, "spec_file": None, "question": "", "title": "", "config": config,
                       "seeds": seeds, "set": {}, "grid": grid, "zip": {}, "points": [], "when": [],
                       "report": report_spec.read({}, "--grid")})


def check_spec(spec: dict) -> dict:
    """Shape checks that need no config: seeds, an empty grid, the report's options, repeated keys."""
    seeds = spec["seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list, range)):
        raise UserError(f"seeds must be a number of seeds or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise UserError(f"seeds = {seeds}: give at least 1 (statistics over seeds need 2 or more)")
        seeds = range(seeds)  # not listed yet: counted first (check_size), whatever the number
    elif isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise UserError(f"seeds = {spec['seeds']!r}: give a number >= 1 or a list of distinct integers >= 0")
    spec["seeds"] = seeds
    for key, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise UserError(f"the grid's {key} has no values: give a list, e.g. {key} = [v1, v2]")
        if len({toml_literal(v) for v in values}) != len(values):
            raise UserError(f"the grid's {key} lists a value twice: {values!r}")
    for key in ["train.seed"]:
        if key in spec["set"] or key in spec["grid"] or any(key in p["values"] or key in p["set"]
                                                            for p in spec["points"]):
            raise UserError("train.seed is set by the sweep's seeds: give `seeds` (a number or a list) instead")
    spec.setdefault("cli_set", [])
    swept = set(spec["grid"]) | set(spec.get("zip", {})) | {k for p in spec["points"] for k in p["values"]}
    fixed = set(spec["set"]) | {item.partition("=")[0].strip() for item in spec["cli_set"]}
    both = sorted(swept & fixed)
    if both:
        raise UserError(f"{', '.join(both)} is both fixed ([set] / --set) and swept (a grid key or a point's "
                        f"key): keep one")
    return spec


# --- points and runs --------------------------------------------------------------------------------------

def run_count(spec: dict) -> tuple:
    """(points, seeds) from the spec's lengths alone, nothing built: the grid's product plus the explicit
    points (1 for a seeds-only sweep), and the number of seeds."""
    axes = [len(values) for values in spec["grid"].values()]
    axes += [len(next(iter(spec["zip"].values())))] if spec.get("zip") else []  # a zip is one more axis
    grid = math.prod(axes) if axes else 0
    return (grid + len(spec["points"])) or 1, len(spec["seeds"])


def check_size(spec: dict, max_runs: int = MAX_RUNS) -> None:
    """Refuse, before anything is built, a sweep of more than ``max_runs`` runs (one error line: the count,
    and the flag that confirms it)."""
    points, seeds = run_count(spec)
    if points * seeds > max_runs:
        grid = " x ".join([str(len(v)) for v in spec["grid"].values()]
                          + ([str(len(next(iter(spec["zip"].values()))))] if spec.get("zip") else []))
        shape = (f"a {grid} grid" if grid else "") + \
            (f"{' + ' if grid else ''}{len(spec['points'])} point(s)" if spec["points"] else "")
        raise UserError(f"this sweep plans {points * seeds:,} runs ({shape or '1 point'} = {points:,} point(s) x "
                        f"{seeds:,} seed(s)), more than --max-runs {max_runs:,}: check the grid and seeds, or "
                        f"confirm the count with --max-runs {points * seeds}")


def points_of(spec: dict) -> list:
    """The grid's product (keys in spec order, the zip as its last axis), then the explicit points; each
    {"id", "values", "set", "from"}, with the sets of every [[when]] whose values it has."""
    axes = [[{k: v} for v in values] for k, values in spec["grid"].items()]
    zipped = spec.get("zip") or {}
    if zipped:
        axes.append([dict(zip(zipped, combo)) for combo in zip(*zipped.values())])
    grid = [{k: v for part in combo for k, v in part.items()} for combo in product(*axes)] if axes else []
    points = [{"values": v, "set": {}, "from": "grid"} for v in grid]
    points += [{**p, "set": dict(p["set"]), "from": "points"} for p in spec["points"]]
    points = points or [{"values": {}, "set": {}, "from": "seeds"}]  # seeds only
    for point, pid in zip(points, point_ids(points)):
        point["id"] = pid
        for when in spec.get("when", []):
            if all(point["values"].get(k) == v for k, v in when["values"].items()):
                point["set"].update(when["set"])
    seen = set()
    for p in points:
        if p["id"] in seen:
            raise UserError(f"the point {p['id']} appears twice in the spec; give each point once")
        seen.add(p["id"])
    return points


def overrides_of(spec: dict, point: dict, seed: int) -> list:
    """``section.key=value`` strings in the order they apply: [set], the point's own set, --set, the point,
    the seed."""
    fixed = [f"{k}={toml_literal(v)}" for k, v in {**spec["set"], **point["set"]}.items()]
    return [*fixed, *spec["cli_set"], *(f"{k}={toml_literal(v)}" for k, v in point["values"].items()),
            f"train.seed={seed}"]


def resolve_runs(spec: dict, out: Path) -> list:
    """Every (point, seed) resolved and validated: [{"point", "values", "seed", "dir", "overrides", "cfg"}].
    The first bad key or value raises a ConfigError naming the point."""
    if spec["config"]:
        config_mod.load(spec["config"])  # an unreadable base config is named as such, not as a point's error
    runs = []
    for point in points_of(spec):
        for seed in spec["seeds"]:
            overrides = overrides_of(spec, point, seed)
            try:
                cfg = config_mod.resolve(spec["config"], overrides)
            except ConfigError as e:
                raise ConfigError(f"point {point['id']}: {e}") from None
            runs.append({"point": point["id"], "values": point["values"], "seed": seed, "overrides": overrides,
                         "dir": Path(out) / "runs" / point["id"] / f"seed-{seed}", "cfg": cfg})
    return runs
