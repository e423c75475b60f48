"""Quantitative muscle MRI: signal models, fitting, segmentation and metrics.

Pure functions of arrays and explicit parameters (no files, no globals, no database).

Public fitting API (import from the submodules):

- :func:`qmri.epg.cpmg_echo_train` — EPG CPMG echo trains (B1, slice profile).
- :func:`qmri.fat_spectrum.fat_signal` — six-peak fat spectrum (complex, unit at TE = 0).
- :func:`qmri.t2_fit.fit_water_t2` ``(echoes, echo_times_ms, ...) -> T2FitResult`` —
  bi-component EPG water T2, fat fraction and B1 (dictionary + variable projection).
- :func:`qmri.t2_fit.fit_mono_t2` ``(echoes, echo_times_ms, ...) -> MonoT2Result``.
- :func:`qmri.t2_fit.calibrate_fat_t2_ms` — fat T2 from subcutaneous fat voxels.
- :func:`qmri.dixon.fit_dixon_complex` ``(signal, echo_times_ms, field_strength_t, ...)
  -> DixonResult`` — multi-echo complex GRE water/fat/B0/R2*.
- :func:`qmri.dixon.ff_from_water_fat` — FF from vendor water/fat magnitude images.
- :func:`qmri.dixon.fit_dixon_magnitude_phase` — 3-point Dixon from magnitude + phase images.
- :func:`qmri.dixon.fat_water_separation_deg` and :func:`qmri.dixon.ff_crlb_std_points` —
  conditioning of a set of echo times (rotation of fat vs water; Cramer-Rao bound of the FF);
  ill-conditioned echo times (e.g. the GE dual-echo B0-map sample) are explained in
  ``qmri/README.md`` and refused by :func:`qmri.run.run_dixon_fit` (B0 map only).
- :mod:`qmri.io` — ORMIR-MIDS NIfTI + JSON readers and ``mr-quant`` map writers.
- :func:`qmri.run.run_t2_fit` / :func:`qmri.run.run_dixon_fit` ``(path, out_dir, options,
  progress) -> list[Path]`` — file in, maps + sidecars out (what the CLI and pipeline call).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
