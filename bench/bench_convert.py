"""Benchmark: DICOM → ORMIR-MIDS conversion throughput on the real samples.

Run:  .venv/bin/python bench/bench_convert.py [--repeat N]

For each sample (and all together) it times scan → plan → convert on a marked-de-identified copy
(the copy is made before timing), and, as a baseline measured in the same run, a bare
``pydicom.dcmread`` + ``pixel_array`` of the same files. Prints images/s, MB/s (input DICOM
bytes), the ratio to the baseline, the split scan / plan / write (pixels + NIfTI gzip + JSON)
of the best run, and the peak RSS of the process at the end.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ingest"))

from ingest_helpers import mark_deidentified  # noqa: E402

from ingest.convert import convert, plan_conversion  # noqa: E402
from ingest.scan import scan_folder  # noqa: E402

SAMPLES = ("ge_megre_thigh", "siemens_mese_thigh", "siemens_xa_enhanced_mese_calf")
DATA = ROOT.parent / "shared" / "data" / "real"


def baseline(folder: Path) -> float:
    start = time.perf_counter()
    for path in sorted(folder.rglob("*.dcm")):
        _ = pydicom.dcmread(path).pixel_array
    return time.perf_counter() - start


def pipeline(folder: Path, out: Path) -> tuple[float, int, dict[str, float]]:
    t0 = time.perf_counter()
    scan = scan_folder(folder)
    t1 = time.perf_counter()
    plan = plan_conversion(scan)
    t2 = time.perf_counter()
    result = convert(plan, out)
    t3 = time.perf_counter()
    if result.failed or any(n.kind == "refused" for n in plan.not_converted):
        raise SystemExit(f"conversion failed: {result.failed} {plan.not_converted}")
    stages = {"scan": t1 - t0, "plan": t2 - t1, "write": t3 - t2}
    return t3 - t0, sum(f.n_images for f in result.files), stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real samples not found at {DATA}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for n, name in enumerate(SAMPLES):
            mark_deidentified(DATA / name, src / name, patient_id=f"BENCH{n}")
        print(
            f"{'sample':32s} {'images':>6s} {'MB':>6s} {'s':>6s} {'img/s':>7s} {'MB/s':>6s} "
            f"{'base s':>6s} {'x base':>6s}"
        )
        for name in (*SAMPLES, "all"):
            folder = src if name == "all" else src / name
            size_mb = sum(p.stat().st_size for p in folder.rglob("*.dcm")) / 1e6
            best = best_base = float("inf")
            images = 0
            best_stages: dict[str, float] = {}
            for r in range(args.repeat):
                out = Path(tmp) / f"out-{name}-{r}"
                elapsed, images, stages = pipeline(folder, out)
                shutil.rmtree(out)
                if elapsed < best:
                    best, best_stages = elapsed, stages
                best_base = min(best_base, baseline(folder))
            print(
                f"{name:32s} {images:6d} {size_mb:6.1f} {best:6.2f} {images / best:7.1f} "
                f"{size_mb / best:6.1f} {best_base:6.2f} {best / best_base:6.2f}  "
                + " ".join(f"{k} {v:.2f}s" for k, v in best_stages.items())
            )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
