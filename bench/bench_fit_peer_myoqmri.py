"""MyoQMRI 2.0.2 CPU path timed on MyoVault's simulated voxels (run in a separate venv).

Usage (MyoQMRI's pins clash with the project's, so it lives in its own venv)::

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install myoqmri
    .venv/bin/python -c "import sys; sys.path.insert(0, 'bench'); import numpy as np; \
        from bench_fit import simulate_mese; y, t2, ff = simulate_mese(500_000, \
        np.random.default_rng(0)); np.savez('/tmp/mese.npz', y=y[:50000], t2=t2[:50000], \
        ff=ff[:50000])"
    cd /tmp && mkdir -p data && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        /tmp/peers/bin/python /work/main/bench/bench_fit_peer_myoqmri.py /tmp/mese.npz 20000

(the same seeded voxels as ``bench_fit.py``'s voxel-wise water-T2 case; MyoQMRI caches its
dictionary under ``./data``).

Dictionary: FatFractionLookup with waterT2's defaults (T2 20-80 ms, B1 0.5-1.2, fat T2 151 ms,
refocusing width factor 1.2; 60 x 20 x 101 = 121 200 atoms), squared-signal normalised
correlation and argmax exactly as waterT2.fitSlcFast (blocks of 14 rows x 256 columns).
"""

import os
import sys
import time

import numpy as np
from MyoQMRI.waterT2.FatFractionLookup import FatFractionLookup

d = np.load(sys.argv[1])
n = int(sys.argv[2])
y, t2, ff = d["y"][:n].astype(np.float64), d["t2"][:n], d["ff"][:n]
print("load", os.getloadavg(), "threads", os.environ.get("OMP_NUM_THREADS"))
w0, c0 = time.perf_counter(), time.process_time()
ffl = FatFractionLookup((20, 80), (0.5, 1.2), 151, 17, 10.0, 1.2)
pc, signals = ffl.getAllSignals()
signals = signals**2
signals_cpu = np.transpose(signals / np.linalg.norm(signals, axis=1, keepdims=True))
print(
    f"dictionary {signals.shape[0]} atoms: wall {time.perf_counter() - w0:.1f} s, CPU {time.process_time() - c0:.1f} s"
)
w0, c0 = time.perf_counter(), time.process_time()
out = np.empty((n, 3))
block = 14 * 256
for i in range(0, n, block):
    corr = np.dot(y[i : i + block] ** 2, signals_cpu)
    out[i : i + block] = pc[np.argmax(corr, 1)]
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
print(
    f"fit {n} voxels: wall {wall:.2f} s ({n / wall:,.0f} voxels/s), CPU {cpu:.2f} s ({n / cpu:,.0f} voxels per CPU-s)"
)
sel = ff < 0.6
print(
    f"T2 MAE(FF<60%) {np.median(np.abs(out[:, 0] - t2)[sel]):.2f} ms, FF MAE {np.median(np.abs(100 * out[:, 2] - 100 * ff)):.2f} pt (its model includes a slice profile the simulation lacks)"
)
print("load", os.getloadavg())
