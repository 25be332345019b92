"""The benchmark's targets, checked against a results dict (every number from it): one row per
target and model with the limit, the measured value, whether it was met and, if not, by how
much and why."""

from __future__ import annotations

import math
from typing import Any

from tables import MODEL_ORDER, get, is_num


def _ratio_target(results, model, config, limit, label) -> dict[str, Any] | None:
    cfg = get(results, "models", model, "overhead", "configs", config)
    if not cfg:
        return None
    value = cfg.get("time_ratio")
    row = {"target": label, "model": model, "limit": f"≤ {limit:.2f}x", "measured": value}
    if not is_num(value):
        row.update(met=None, note=cfg.get("error", "not measured"))
        return row
    row["met"] = value <= limit
    if not row["met"]:
        row["missed_by"] = f"{value - limit:+.3f}x ({(value / limit - 1) * 100:+.1f} %)"
        row["note"] = _overhead_note(results, model, cfg)
    return row


def _overhead_note(results, model, cfg) -> str:
    costs = get(results, "models", model, "costs") or {}
    parts = []
    share = cfg.get("probe_share")
    if is_num(share):
        parts.append(
            f"time inside the probe callbacks: {share * 100:.1f} % of the probed run "
            f"(so {share / max(1 - share, 1e-9) * 100:.1f} % of training time)"
        )
    spread = cfg.get("plain_spread")
    if is_num(spread):
        parts.append(f"neighbouring plain blocks differed by {spread * 100:.1f} % (timing noise)")
    cadence = cfg.get("cadence")
    kind = cfg.get("kind")
    hvp = costs.get("hvp_steps")
    if kind in ("curvature", "bundle") and is_num(hvp) and cadence:
        n_hvp = cfg.get("curvature_hvps_per_firing")
        n_hvp = n_hvp if is_num(n_hvp) else 30
        per = n_hvp * hvp + (costs.get("graph_build_steps") or 0)
        parts.append(
            f"one curvature probe = graph build + {n_hvp:.0f} HVPs (converged Lanczos + "
            f"trace, mean over this block's firings) at {hvp:.2f} steps each ~ {per:.0f} "
            f"steps, i.e. ~{per / cadence:.2f} steps per step at cadence {cadence}: the "
            f"{model} budget needs cadence ≥ {math.ceil(per / 0.3)} (or fewer HVPs, or a "
            "smaller fixed probe batch)"
        )
    if kind == "step" and cadence:
        parts.append(
            f"a same-batch step probe adds one forward+backward at x_(t+1) (~1 step) per "
            f"{cadence} steps (≥ {100 / cadence:.1f} %) plus three float64 copies of all "
            "parameters per probe period; probes run in fp32 outside autocast"
        )
    if kind == "step_fresh" and cadence:
        parts.append(
            f"a fresh-batch step probe adds one forward at x_t (~1/3 step) per {cadence} "
            f"steps (≥ {33 / cadence:.1f} %) plus float64 copies of all parameters on the "
            "probed step and its neighbours"
        )
    if kind == "bundle" and cadence:
        parts.append(
            f"its same-batch step probe adds ~1 step per {cadence} steps (≥ {100 / cadence:.1f} %)"
        )
    if kind in ("noise", "bundle") and cfg.get("noise_method"):
        pe = get(costs, "per_example", "noise_probe_steps")
        if is_num(pe) and cadence:
            parts.append(
                f"noise probe ({cfg['noise_method']}) ~ {pe:.2f} steps per firing "
                f"(~{pe / cadence * 100:.1f} % at cadence {cadence})"
            )
    return "; ".join(parts)


def _cockpit_target(results) -> dict[str, Any] | None:
    ours = get(results, "models", "cnn", "overhead", "configs", "bundle@64", "time_ratio")
    cockpit = get(results, "models", "cnn", "overhead", "configs", "cockpit-full@64")
    if cockpit is None:
        return None
    label = "bundle@64 at least 2x cheaper than Cockpit full@64 (overhead above plain)"
    row = {"target": label, "model": "cnn", "limit": "≥ 2.00x"}
    theirs = cockpit.get("time_ratio")
    if not (is_num(ours) and is_num(theirs)):
        row.update(measured=None, met=None, note=cockpit.get("error", "not measured"))
        return row
    factor = (theirs - 1) / max(ours - 1, 1e-9)
    row.update(
        measured=factor,
        detail=f"Cockpit full@64 x{theirs:.3f}, optprobe bundle@64 x{ours:.3f}",
        met=factor >= 2,
    )
    if not row["met"]:
        row["missed_by"] = f"{factor - 2:+.2f}"
        row["note"] = (
            f"overhead above plain: Cockpit full@64 {theirs - 1:+.3f}, optprobe "
            f"bundle@64 {ours - 1:+.3f}. Cockpit's full configuration computes BackPACK's "
            "diagonal Hessian, individual gradients and a power iteration; the bundle "
            "a step pass, per-example gradients and a converged Lanczos run plus a trace "
            "estimate per curvature probe"
        )
    return row


def _lambda_max_target(model: str, lam: dict[str, Any]) -> dict[str, Any]:
    row = {
        "target": "λ_max to 1e-3 in ≤ half the HVPs of power iteration",
        "model": model,
        "limit": "≤ 0.50",
    }
    lz, pw = lam.get("lanczos_hvps_to_1e-3"), lam.get("power_hvps_to_1e-3")
    if is_num(lam.get("hvp_ratio_lanczos_over_power")):
        ratio = lam["hvp_ratio_lanczos_over_power"]
        row.update(measured=ratio, detail=f"Lanczos {lz} vs power {pw} HVPs", met=ratio <= 0.5)
    elif is_num(lam.get("hvp_ratio_lanczos_over_power_upper_bound")):
        ratio = lam["hvp_ratio_lanczos_over_power_upper_bound"]
        detail = (
            f"Lanczos {lz} HVPs; power iteration not within 1e-3 after "
            f"{lam.get('power_hvps_run')} (ratio is an upper bound)"
        )
        row.update(measured=ratio, detail=detail, met=ratio <= 0.5)
    else:
        row.update(
            measured=None,
            met=None,
            note=f"Lanczos did not settle within 1e-3 in {lam.get('reference_steps')} steps",
        )
    if row.get("met") is False:
        row["missed_by"] = f"{row['measured'] - 0.5:+.2f}"
        row["note"] = (
            f"power iteration needed only {pw} HVPs here (its stop rule fired after "
            f"{lam.get('power_hvps_rule')}): a spectrum where it converges fast, so "
            "Lanczos' edge is small"
        )
    if lam.get("dominant_is_negative"):
        row["note"] = (
            row.get("note", "") + "; |λ_min| > λ_max, so power iteration approaches λ_min"
        ).lstrip("; ")
    return row


def _hvp_target(results) -> dict[str, Any] | None:
    hvp = get(results, "models", "resnet18", "costs", "hvp_steps")
    if hvp is None:
        return None
    row = {
        "target": "one HVP ≤ 2.5 training steps",
        "model": "resnet18",
        "limit": "≤ 2.50",
        "measured": hvp,
        "met": hvp <= 2.5,
    }
    if not row["met"]:
        fwd = get(results, "models", "resnet18", "costs", "hvp_forward_over_reverse_steps")
        row["missed_by"] = f"{hvp - 2.5:+.2f} steps ({(hvp / 2.5 - 1) * 100:+.0f} %)"
        row["note"] = (
            "double backward runs a backward pass through the gradient graph, whose "
            "nodes include the first backward's (about twice a backward's work, plus "
            "BatchNorm's second-order terms); forward-over-reverse "
            + (f"measured {fwd:.2f} steps" if is_num(fwd) else "cannot run on train-mode BatchNorm")
        )
    return row


def _converged_target(results, model) -> dict[str, Any] | None:
    """Lanczos met tol on ≥ 95 % of the curvature firings of the model's overhead blocks."""
    configs = get(results, "models", model, "overhead", "configs") or {}
    flags = [f for cfg in configs.values() for f in cfg.get("curvature_converged", [])]
    if not flags:
        return None
    converged = sum(1 for f in flags if f == 1)
    share = converged / len(flags)
    row = {
        "target": "λ_max and λ_min converged to 1e-3 (default config)",
        "model": model,
        "limit": "≥ 95 % of firings",
        "measured": share,
        "detail": f"{converged} of {len(flags)} firings",
        "met": share >= 0.95,
    }
    if not row["met"]:
        row["missed_by"] = f"{(share - 0.95) * 100:+.0f} points"
        row["note"] = (
            "Lanczos hit its cap (lanczos_iters) before both Ritz residual bounds met tol; "
            "curvature-<device>-quick.md has the errors of capped firings"
        )
    return row


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target that the results can judge, in the report's order."""
    step_targets = (
        ("step@1", 2.10, "same-batch step probes (all step keys) every step"),
        ("step_fresh@1", 1.40, "fresh-batch convexity keys every step"),
        ("step@16", 1.08, "same-batch step probes at cadence 16"),
        ("step_fresh@16", 1.03, "fresh-batch convexity keys at cadence 16"),
    )
    rows = [
        _ratio_target(results, m, config, limit, label)
        for config, limit, label in step_targets
        for m in MODEL_ORDER
    ]
    rows += [
        _ratio_target(results, m, "bundle@64", 1.30, "full bundle at cadence 64")
        for m in MODEL_ORDER
    ]
    rows.append(_cockpit_target(results))
    rows += [_converged_target(results, m) for m in MODEL_ORDER]
    for model in MODEL_ORDER:
        lam = get(results, "models", model, "costs", "lambda_max")
        if lam:
            rows.append(_lambda_max_target(model, lam))
    rows.append(_hvp_target(results))
    return [r for r in rows if r]
