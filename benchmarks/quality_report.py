"""The quality benchmark's summary (bench_quality.py): per-view records averaged per scene, view
group and method, the quality issue's targets checked on them, and both printed."""
from __future__ import annotations

import math

import numpy as np

from common import device_name
from quality_scoring import GS, OURS, TRUTH, VC, log

HELDOUT_GROUPS = ("far", "close", "all")


def group_order(groups: list[str]) -> list[str]:
    """far, close, all (the held-out photos), then the magnified groups by factor, then others."""
    held = [g for g in ("far", "close") if g in groups]
    if len(held) > 1 or "all" in groups:
        held.append("all")
    mags = sorted((g for g in groups if g.startswith("mag ")), key=lambda g: float(g[4:-1]))
    return held + mags + [g for g in groups if g not in held and g not in mags]


def _mean(sel: list[dict], k: str) -> float | None:
    """Mean of a metric over records, None unless every record has a finite value."""
    vals = [r[k] for r in sel if r[k] is not None and math.isfinite(r[k])]
    return float(np.mean(vals)) if vals and len(vals) == len(sel) else None


def summarise(records: list[dict]) -> list[dict]:
    """Mean over views per (scene, group, method); the group 'all' holds the held-out photos
    (far and close), never the magnified views."""
    rows = []
    for scene in dict.fromkeys(r["scene"] for r in records):
        rs = [r for r in records if r["scene"] == scene]
        for g in group_order(list(dict.fromkeys(r["group"] for r in rs))):
            for method in dict.fromkeys(r["method"] for r in rs):
                sel = [r for r in rs if r["method"] == method
                       and (r["group"] == g or (g == "all" and r["group"] in HELDOUT_GROUPS))]
                if not sel:
                    continue

                rows.append({"scene": scene, "group": g, "views": len(sel), "method": method,
                             **{k: _mean(sel, k) for k in ("psnr", "ssim", "lpips", "speckle")},
                             "train_s": sel[0]["train_s"], "render_ms": _mean(sel, "render_ms")})
    return rows


def _target(scene: str, group: str, target: str, margin: float | None) -> dict:
    return {"scene": scene, "group": group, "target": target, "margin": margin,
            "met": None if margin is None else bool(margin >= 0)}


def _over(a: float | None, b: float | None, need: float = 0.0) -> float | None:
    return None if a is None or b is None else a - b - need


def check_targets(rows: list[dict]) -> list[dict]:
    """The quality issue's targets on the capture scenes. One entry per (scene, group, target):
    the margin (>= 0: met) and met (None when a term is missing, e.g. 3DGS skipped)."""
    get = {(r["scene"], r["group"], r["method"]): r for r in rows}

    def val(scene: str, group: str, method: str, key: str) -> float | None:
        r = get.get((scene, group, method))
        return None if r is None else r[key]
    out = []
    for sc in dict.fromkeys(r["scene"] for r in rows if r["scene"].startswith("capture")):
        for g in ("far", "close"):
            ours = val(sc, g, OURS, "psnr")
            out.append(_target(sc, g, "PSNR >= 3DGS + 1 dB", _over(ours, val(sc, g, GS, "psnr"), 1.0)))
            out.append(_target(sc, g, "PSNR >= vertex colour + 2 dB", _over(ours, val(sc, g, VC, "psnr"), 2.0)))
            out.append(_target(sc, g, "SSIM >= 3DGS", _over(val(sc, g, OURS, "ssim"), val(sc, g, GS, "ssim"))))
        for f in (2, 4, 8):
            g = f"mag {f}x"
            sp, ref = val(sc, g, OURS, "speckle"), val(sc, g, TRUTH, "speckle")
            out.append(_target(sc, g, "speckle <= 2 x ground truth + 0.2 %",
                               None if sp is None or ref is None else 2 * ref + 0.002 - sp))
            base = {m: val(sc, g, m, "psnr") for m in (GS, VC) if val(sc, g, m, "psnr") is not None}
            t = _target(sc, g, "PSNR >= every baseline",
                        _over(val(sc, g, OURS, "psnr"), max(base.values())) if base else None)
            t["baselines"] = list(base)                     # the ones that ran
            out.append(t)
    return out


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        verdict = "n/a" if t["met"] is None else "met" if t["met"] else "MISSED"
        if t["margin"] is None:
            margin = "n/a"
        elif "speckle" in t["target"]:
            margin = f"{100 * t['margin']:+.3f} %"
        elif "SSIM" in t["target"]:
            margin = f"{t['margin']:+.4f}"
        else:
            margin = f"{t['margin']:+.2f} dB"
        only = f" ({', '.join(t['baselines'])} only)" if t.get("baselines") and len(t["baselines"]) < 2 else ""
        log(f"target {t['scene']} {t['group']}: {t['target']}{only}: margin {margin}: {verdict}")


def print_table(rows: list[dict]) -> None:
    def f(v, spec: str, scale: float = 1.0) -> str:
        return "n/a" if v is None else format(v * scale, spec)
    print(f"\nXScale-NVS quality benchmark -- {device_name()}")
    print(f"{'scene':14s} {'view group':12s} {'method':22s} {'PSNR':>7s} {'SSIM':>7s} {'LPIPS':>7s} "
          f"{'speckle%':>8s} {'train s':>9s} {'render ms':>10s}")
    for r in rows:
        print(f"{r['scene'][:14]:14s} {r['group'] + ' (' + str(r['views']) + ')':12s} {r['method']:22s} "
              f"{f(r['psnr'], '.2f'):>7s} {f(r['ssim'], '.4f'):>7s} {f(r['lpips'], '.4f'):>7s} "
              f"{f(r['speckle'], '.3f', 100.0):>8s} {f(r['train_s'], '.1f'):>9s} {f(r['render_ms'], '.1f'):>10s}",
              flush=True)
