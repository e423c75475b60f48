"""Segmentation accuracy and speed on held-out synthetic test subjects.

For every *test* label map of the subject split (never seen in training or validation) and
every severity (healthy / moderate / severe), a synthetic subject is made with a fixed seed
(random acquisition: noise, bias field, resolution, 1.5 or 3 T), segmented with the shipped
model on 1.5 mm pixels (so the model's 3 mm resampling is exercised), and compared with the
true labels:

* Dice per muscle and side -> mean and worst muscle per severity (and per input contrast);
* per-muscle mean FF (from the simulated noisy FF map, 1-voxel in-plane erosion) with the
  automatic labels vs the true labels (absolute difference in FF points);
* inference time per volume, and for a whole-thigh sized volume (512 x 512 x 65).

Run from the repository root::

    .venv/bin/python bench/bench_segmentation.py \
        --labels-dir ../shared/data/labels/thigh_11_muscles [--json out.json] \
        [--models-root DIR_HOLDING_A_FRESHLY_TRAINED_MODEL_FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qmri.metrics import compute_muscle_metrics  # noqa: E402
from qmri.phantom import load_label_map, split_files, synthesize  # noqa: E402
from qmri.segmentation import load_model, segment_volume  # noqa: E402
from qmri.segmentation.labels import MUSCLE_NAMES, to_side_labels  # noqa: E402
from qmri.segmentation.train import dice_per_label  # noqa: E402

SEVERITIES = ("healthy", "moderate", "severe")
CONTRASTS = ("water", "mese", "gre", "fat")


def _pick_slices(labels: np.ndarray, max_slices: int) -> np.ndarray:
    zs = np.nonzero(labels.any(axis=(0, 1)))[0]
    if len(zs) <= max_slices:
        return labels[:, :, zs[0] : zs[-1] + 1]
    keep = np.round(np.linspace(zs[0], zs[-1], max_slices)).astype(int)
    return labels[:, :, keep]


def run(
    labels_dir: Path,
    model_name: str | None,
    max_slices: int,
    seed: int,
    models_roots: tuple[Path, ...] = (),
) -> dict:
    torch.set_num_threads(1)
    model = load_model(model_name, extra_roots=models_roots)
    files = split_files(labels_dir)["test"]
    cases = []
    for i, path in enumerate(files):
        lm = load_label_map(path)
        labels = _pick_slices(lm.labels, max_slices)
        for j, severity in enumerate(SEVERITIES):
            contrast = CONTRASTS[(i + j) % len(CONTRASTS)]
            rng = np.random.default_rng([seed, i, j])
            vol = synthesize(
                labels,
                lm.spacing_mm,
                severity=severity,
                rng=rng,
                contrasts=(contrast, "ff"),
                out_pixel_mm=1.5,
            )
            right = (np.arange(vol.labels.shape[0]) >= vol.midline)[:, None, None]
            truth = to_side_labels(vol.labels, right)
            t0 = time.perf_counter()
            result = segment_volume(vol.images[contrast], vol.spacing_mm, model)
            seconds = time.perf_counter() - t0
            dice = dice_per_label(result.labels, truth, range(1, 23))
            ff_map = vol.images["ff"] * 100.0
            auto = {
                r.label: r.ff_mean_pct
                for r in compute_muscle_metrics(result.labels, vol.spacing_mm, ff_percent=ff_map)
            }
            true = {
                r.label: r.ff_mean_pct
                for r in compute_muscle_metrics(truth, vol.spacing_mm, ff_percent=ff_map)
            }
            ff_diff = [abs(auto[k] - true[k]) for k in true if k in auto and np.isfinite(true[k])]
            missing = [k for k in true if k not in auto]
            cases.append(
                {
                    "file": path.name,
                    "severity": severity,
                    "contrast": contrast,
                    "shape": list(vol.labels.shape),
                    "dice": {str(k): v for k, v in dice.items()},
                    "ff_abs_diff_pct": ff_diff,
                    "labels_missing": missing,
                    "seconds": seconds,
                    "side_mode": result.sides.mode,
                }
            )
            mean = np.nanmean(list(dice.values()))
            print(
                f"{path.name[:34]:34s} {severity:8s} {contrast:5s} dice {mean:.3f} "
                f"ffdiff max {max(ff_diff) if ff_diff else float('nan'):.2f} "
                f"{seconds:.1f}s {result.sides.mode}",
                flush=True,
            )
    big = np.random.default_rng(0).uniform(0, 1, (512, 512, 65)).astype(np.float32)
    t0 = time.perf_counter()
    segment_volume(big, (0.94, 0.94, 4.0), model)
    whole_s = time.perf_counter() - t0
    return {"model": f"{model.name}@{model.version}", "cases": cases, "whole_thigh_s": whole_s}


def _per_muscle(cases: list[dict]) -> np.ndarray:
    """(n_cases, 11) Dice per muscle, averaged over the two sides."""
    out = np.full((len(cases), 11), np.nan)
    for c, case in enumerate(cases):
        for m in range(11):
            vals = [case["dice"][str(m + 1)], case["dice"][str(m + 12)]]
            vals = [v for v in vals if not np.isnan(v)]
            if vals:
                out[c, m] = float(np.mean(vals))
    return out


def report(results: dict) -> str:
    lines = [f"Model `{results['model']}`", ""]
    lines.append(
        "| group | cases | mean Dice | worst muscle (mean Dice) | min case-muscle Dice | "
        "FF diff mean / p95 / max (points) | muscles within 2 FF points |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    groups = [(s, [c for c in results["cases"] if c["severity"] == s]) for s in SEVERITIES]
    groups.append(("all", results["cases"]))
    for name, cases in groups:
        per = _per_muscle(cases)
        muscle_mean = np.nanmean(per, axis=0)
        worst = int(np.nanargmin(muscle_mean))
        diffs = [d for c in cases for d in c["ff_abs_diff_pct"]]
        lines.append(
            f"| {name} | {len(cases)} | {np.nanmean(per):.3f} | {MUSCLE_NAMES[worst]} "
            f"({muscle_mean[worst]:.3f}) | {np.nanmin(per):.3f} | "
            f"{np.mean(diffs):.2f} / {np.percentile(diffs, 95):.2f} / {np.max(diffs):.2f} | "
            f"{np.mean(np.asarray(diffs) <= 2.0):.0%} |"
        )
    lines += ["", "| input contrast | cases | mean Dice |", "|---|---|---|"]
    for contrast in CONTRASTS:
        cases = [c for c in results["cases"] if c["contrast"] == contrast]
        if cases:
            lines.append(f"| {contrast} | {len(cases)} | {np.nanmean(_per_muscle(cases)):.3f} |")
    lines += ["", "| muscle | healthy | moderate | severe |", "|---|---|---|---|"]
    per_sev = {
        s: np.nanmean(_per_muscle([c for c in results["cases"] if c["severity"] == s]), axis=0)
        for s in SEVERITIES
    }
    for m, name in enumerate(MUSCLE_NAMES):
        lines.append(f"| {name} | " + " | ".join(f"{per_sev[s][m]:.3f}" for s in SEVERITIES) + " |")
    secs = [c["seconds"] for c in results["cases"]]
    slices = [c["shape"][2] for c in results["cases"]]
    lines += [
        "",
        f"Inference: {np.mean(secs):.2f} s per test volume (mean {np.mean(slices):.0f} slices); "
        f"whole-thigh sized volume 512 x 512 x 65: {results['whole_thigh_s']:.1f} s "
        f"(1 torch thread).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--labels-dir", type=Path, default=ROOT.parent / "shared/data/labels/thigh_11_muscles"
    )
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--models-root",
        type=Path,
        action="append",
        default=[],
        help="extra model folder (e.g. a fresh train-segmentation --out's parent); overrides"
        " shipped models of the same name",
    )
    parser.add_argument("--max-slices", type=int, default=16)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = run(args.labels_dir, args.model, args.max_slices, args.seed, tuple(args.models_root))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), "utf-8")
    print(report(results))


if __name__ == "__main__":
    main()
