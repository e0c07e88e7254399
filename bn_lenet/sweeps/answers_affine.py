"""The answers of the studies about BN's affine parts and the bias before it (configs/sweeps/NAME.toml):

    bias              drop the conv/linear bias before BN (model.bias = false): accuracy, loss, parameter count,
                      and beta taking the bias's role
    fixed_gamma_beta  gamma fixed at 1 and/or beta fixed at 0 (bn.scale / bn.center), and what the trained ones
                      look like per layer

Both read the runs' bn_params.json (final gamma/beta per channel); parameter counts and the bias check come
from the network each point's config builds (model.from_config), never from a figure written here.
"""

import torch

from ..training import config as config_mod
from .answers_common import beyond_noise, diff_line, finals, find, loss_notes, mean, ms, status_note
from ..network.model import bn_layers, count_parameters, from_config
from ..network.options import LAYERS
from .stats import describe, finished

BN_NORMS = {"scratch": "scratch BN", "torch": "nn.BatchNorm"}


def point_config(point: dict):
    """The validated config of the point's first run that wrote one (every seed of a point has the same
    network), or None."""
    for run in point["runs"]:
        path = run["dir"] / "config.toml"
        if path.is_file():
            return config_mod.resolve(path)
    return None


def network(cfg):
    """The network a config trains, built without touching the caller's random numbers."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return from_config(cfg)


def bias_cancels(cfg, shift: float = 3.0) -> dict | None:
    """Shift the bias of every layer that feeds a BN by ``shift`` and measure what changes in training mode on
    one random batch: {"output": max |change| of the logits, "bias_grad": largest |gradient| of those biases,
    "beta_grad": largest |gradient| of the BN betas}. BN subtracts the batch mean, so a bias right before it
    cancels: the output does not move and the bias gets no gradient; the layer's shift is beta's job."""
    net = network(cfg)
    biases = []
    for name in LAYERS:
        block = getattr(net, name)
        layer = block.conv if hasattr(block, "conv") else block.linear
        if hasattr(block, "bn") and layer.bias is not None:
            biases.append(layer.bias)
    if not biases or cfg.model.placement != "before":
        return None
    net.train()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = net(x)
    before.square().mean().backward()
    out = {"bias_grad": max(b.grad.abs().max().item() for b in biases),
           "beta_grad": max(layer_beta(m).grad.abs().max().item() for m in bn_layers(net).values())}
    with torch.no_grad():
        for b in biases:
            b.add_(shift)
        out["output"] = (net(x) - before).abs().max().item()
    return out


def layer_beta(layer):
    return layer.beta if hasattr(layer, "beta") else layer.bias


def beta_stats(point: dict | None) -> dict:
    """{layer: ([mean of beta over channels, per finished run], [std over channels, per run])}."""
    out = {}
    for run in finished(point["runs"]) if point else []:
        for layer, p in run["bn_params"].items():
            d = describe(p["beta"])
            means, stds = out.setdefault(layer, ([], []))
            means.append(d["mean"])
            stds.append(d["std"])
    return out


# --- bias -----------------------------------------------------------------------------------------------

def bias_pair(sweep: dict, norm: str) -> tuple:
    """(the point with the bias kept, the point with it dropped) of one norm; None where absent."""
    return (find(sweep, {"model.norm": norm, "model.bias": True}),
            find(sweep, {"model.norm": norm, "model.bias": False}))


def bias(sweep: dict) -> list:
    lines = ["## Answer", ""]
    counts = {p["id"]: count_parameters(network(cfg)) for p in sweep["points"] if (cfg := point_config(p))}
    for norm, name in BN_NORMS.items():
        kept, dropped = bias_pair(sweep, norm)
        if kept is None or dropped is None:
            continue
        saved = (counts[kept["id"]] - counts[dropped["id"]]) if kept["id"] in counts and dropped["id"] in counts else None
        lines.append(f"- {name}: dropping the bias saves {saved if saved is not None else 'n/a'} parameters; "
                     f"{diff_line('without bias', finals(dropped), 'with bias', finals(kept))}{status_note(dropped)}"
                     f"{status_note(kept)}; final loss: "
                     f"{diff_line('without bias', finals(dropped, 'loss'), 'with bias', finals(kept, 'loss'), 'loss')}.")
    ref = find(sweep, {"model.norm": "none", "model.bias": True})
    if ref:
        lines.append(f"- reference, no BN (bias kept): test acc {ms(finals(ref))}, loss {ms(finals(ref, 'loss'))}"
                     f"{status_note(ref)}.")
    lines += ["", "### What it means for you", "", _bias_meaning(sweep), ""]
    lines += ["### Parameters, accuracy, loss", "", "| point | trainable parameters | test acc | loss |", "|---|---|---|---|"]
    for p in sweep["points"]:
        lines.append(f"| {p['id']} | {counts.get(p['id'], 'n/a')} | {ms(finals(p))} | {ms(finals(p, 'loss'))} |")
    return lines + [""] + _beta_section(sweep)


def _bias_meaning(sweep: dict) -> str:
    differs = []
    for norm, name in BN_NORMS.items():
        kept, dropped = bias_pair(sweep, norm)
        for metric in ("test_acc", "loss"):
            if beyond_noise(finals(dropped, metric), finals(kept, metric)):
                differs.append(f"{name}'s {metric.replace('_', ' ')}")
    if not any(finals(p) for p in sweep["points"]):
        return "Not enough finished runs to say yet."
    if differs:
        return (f"Dropping the bias changes {', '.join(differs)} beyond seed noise, against the chapter's claim that "
                f"the bias before BN is redundant: look at the per-seed figures before relying on it.")
    return ("Dropping the bias before BN changes neither accuracy nor loss beyond seed noise, as the chapter says: "
            "drop it (PyTorch: bias=False on a conv/linear followed by BN) and save the parameters and the work.")


def _beta_section(sweep: dict) -> list:
    lines = ["### Beta takes the bias's role", ""]
    scratch_kept = find(sweep, {"model.norm": "scratch", "model.bias": True})
    cfg = point_config(scratch_kept) if scratch_kept else None
    check = bias_cancels(cfg) if cfg else None
    if check:
        lines += [f"On the network of the point {scratch_kept['id']}, in training mode on one random batch: shifting "
                  f"the bias of every layer before a BN by 3 moves the output by at most {check['output']:.1e} "
                  f"(float rounding), and the gradient reaching those biases is at most {check['bias_grad']:.1e} "
                  f"against {check['beta_grad']:.1e} for the BN betas. BN subtracts the batch mean, so the bias "
                  f"cancels (in evaluation too, where the moving mean has absorbed it) and never learns; the only "
                  f"per-channel shift the layer keeps is beta. The run directories keep gamma/beta but not the "
                  f"conv/linear biases, so the files cannot show the trained biases themselves.", ""]
    rows = []
    for norm, name in BN_NORMS.items():
        kept = beta_stats(find(sweep, {"model.norm": norm, "model.bias": True}))
        dropped = beta_stats(find(sweep, {"model.norm": norm, "model.bias": False}))
        for layer in [layer for layer in kept if layer in dropped]:
            (km, ks), (dm, ds) = kept[layer], dropped[layer]
            same = "no" if beyond_noise(km, dm) or beyond_noise(ks, ds) else "yes"
            rows.append(f"| {name} | {layer} | {ms(km)} | {ms(dm)} | {ms(ks)} | {ms(ds)} | {same} |")
    if rows:
        lines += ["What the files do show: beta does the same job with and without the bias. Per layer, the trained "
                  "beta's mean and spread over channels (each a mean ± std over the finished seeds); \"same\" when "
                  "neither differs beyond seed noise:", "",
                  "| norm | layer | beta mean, bias kept | beta mean, bias dropped | beta std over channels, kept | "
                  "dropped | same? |", "|---|---|---|---|---|---|---|", *rows, ""]
        if _draw_betas(sweep):
            lines += ["![beta with and without the bias](bias_beta.png)", "",
                      "Trained beta per channel, all finished seeds pooled, with the bias kept and dropped.", ""]
    return lines


def _draw_betas(sweep: dict) -> bool:
    from ..training.plots import _save, plt
    data = {}
    for norm in BN_NORMS:
        for keep in (True, False):
            p = find(sweep, {"model.norm": norm, "model.bias": keep})
            for run in finished(p["runs"]) if p else []:
                for layer, params in run["bn_params"].items():
                    data.setdefault((norm, layer), {}).setdefault(keep, []).extend(params["beta"])
    if not data:
        return False
    norms = [n for n in BN_NORMS if any(k[0] == n for k in data)]
    fig, axes = plt.subplots(len(norms), len(LAYERS), figsize=(3.2 * len(LAYERS), 2.8 * len(norms)), squeeze=False)
    for row, norm in enumerate(norms):
        for col, layer in enumerate(LAYERS):
            ax = axes[row][col]
            for keep, color in ((True, "tab:blue"), (False, "tab:orange")):
                values = data.get((norm, f"{layer}.bn"), {}).get(keep, [])
                if values:
                    ax.hist(values, bins=20, alpha=0.55, color=color, label=f"bias {'kept' if keep else 'dropped'}")
            ax.set_title(f"{BN_NORMS[norm]}, {layer} beta", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    _save(fig, sweep["out"] / "bias_beta.png")
    return True


def bias_one_line(sweep: dict) -> str:
    kept, dropped = bias_pair(sweep, "scratch")
    k, d = finals(kept), finals(dropped)
    if not k or not d:
        return "not enough finished runs yet"
    counts = [count_parameters(network(cfg)) for cfg in map(point_config, (kept, dropped)) if cfg]
    saved = f", {counts[0] - counts[1]} fewer parameters" if len(counts) == 2 else ""
    noise = "beyond" if beyond_noise(k, d) else "within"
    return f"scratch BN test acc {mean(d):.3f} without bias vs {mean(k):.3f} with ({noise} seed noise){saved}"


# --- fixed gamma / beta ---------------------------------------------------------------------------------

def _gb_label(values: dict) -> str:
    g = "gamma trained" if values.get("bn.scale", True) else "gamma = 1"
    b = "beta trained" if values.get("bn.center", True) else "beta = 0"
    return f"{g}, {b}"


def fixed_gamma_beta(sweep: dict) -> list:
    both = find(sweep, {"bn.scale": True, "bn.center": True})
    lines = ["## Answer", ""]
    for p in sweep["points"]:
        tail = "" if p is both else f"; {diff_line('this', finals(p), 'both trained', finals(both))}"
        lines.append(f"- {_gb_label(p['values'])}: final test acc {ms(finals(p))}, loss {ms(finals(p, 'loss'))}"
                     f"{status_note(p)}{tail}.")
    lines += ["", "### What it means for you", "", _gb_meaning(sweep, both), ""]
    return lines + _trained_section(sweep)


def _gb_meaning(sweep: dict, both) -> str:
    full = finals(both)
    if not full:
        return "Not enough finished runs to say yet."
    worse = [_gb_label(p["values"]) for p in sweep["points"]
             if p is not both and beyond_noise(finals(p), full) and mean(finals(p)) < mean(full)]
    better = [_gb_label(p["values"]) for p in sweep["points"]
              if p is not both and beyond_noise(finals(p), full) and mean(finals(p)) > mean(full)]
    if not worse and not better:
        losses = loss_notes(both, "both trained",
                            [(p, _gb_label(p["values"])) for p in sweep["points"] if p is not both])
        return ("Fixing gamma, beta or both changes final test accuracy by no more than the seeds do: here BN's "
                "learned scale and shift are not needed for test accuracy; the chapter's reason for them (to let "
                "the layer undo the normalization where that helps) does not show in it." + losses)
    parts = []
    if worse:
        parts.append(f"{'; '.join(worse)} costs accuracy beyond seed noise: the learned scale/shift earns its "
                     f"parameters, as the chapter says")
    if better:
        parts.append(f"{'; '.join(better)} does better than training both, beyond seed noise: a finding against the "
                     f"chapter's reason for them")
    return ". ".join(parts) + "."


def _trained_section(sweep: dict) -> list:
    pooled = {}  # (layer, "gamma"|"beta") -> values over channels and finished seeds of the runs that trained it
    for p in sweep["points"]:
        for key, flag in (("gamma", "bn.scale"), ("beta", "bn.center")):
            if not p["values"].get(flag, True):
                continue
            for run in finished(p["runs"]):
                for layer, params in run["bn_params"].items():
                    pooled.setdefault((layer, key), []).extend(params[key])
    if not pooled:
        return []
    lines = ["### The trained gamma and beta per layer", "",
             "Over channels and the finished seeds of every point that trained them (gamma starts at 1, beta at 0):",
             "", "| layer | param | mean | std | min | max | channels x runs |", "|---|---|---|---|---|---|---|"]
    for (layer, key), values in pooled.items():
        d = describe(values)
        lines.append(f"| {layer} | {key} | {d['mean']:.3f} | {d['std']:.3f} | {d['min']:.3f} | {d['max']:.3f} | {d['n']} |")
    _draw_trained(pooled, sweep["out"] / "gamma_beta_trained.png")
    return lines + ["", "![trained gamma and beta per layer](gamma_beta_trained.png)", "",
                    "Distribution of the trained gamma (top) and beta (bottom) per layer, all channels of the finished "
                    "runs that trained them; dashed: the starting value.", ""]


def _draw_trained(pooled: dict, path) -> None:
    from ..training.plots import _save, plt
    layers = list(dict.fromkeys(layer for layer, _ in pooled))
    fig, axes = plt.subplots(2, len(layers), figsize=(3.2 * len(layers), 5.4), squeeze=False)
    for col, layer in enumerate(layers):
        for row, (key, start) in enumerate((("gamma", 1.0), ("beta", 0.0))):
            ax = axes[row][col]
            if pooled.get((layer, key)):
                ax.hist(pooled[(layer, key)], bins=25, color="tab:blue" if key == "gamma" else "tab:orange", alpha=0.75)
            ax.axvline(start, color="gray", ls="--", lw=0.8)
            ax.set_title(f"{layer} {key}", fontsize=9)
            ax.tick_params(labelsize=7)
    _save(fig, path)


def fixed_gamma_beta_one_line(sweep: dict) -> str:
    both, fixed = find(sweep, {"bn.scale": True, "bn.center": True}), find(sweep, {"bn.scale": False, "bn.center": False})
    a, b = finals(both), finals(fixed)
    if not a or not b:
        return "not enough finished runs yet"
    noise = "beyond" if beyond_noise(a, b) else "within"
    return f"test acc {mean(a):.3f} with gamma and beta trained vs {mean(b):.3f} with both fixed ({noise} seed noise)"


ANSWERS = {"bias": bias, "fixed_gamma_beta": fixed_gamma_beta}
ONE_LINE = {"bias": bias_one_line, "fixed_gamma_beta": fixed_gamma_beta_one_line}
