"""The 11 thigh muscles MyoVault segments and indexes, in the issue's order.

Pure data with no imports, so the repository's database models can use it without loading the
segmentation stack (torch). Muscle index = position + 1; the search index's bit and column
positions are the positions in this tuple.
"""

from __future__ import annotations

THIGH_MUSCLES: tuple[str, ...] = (
    "biceps_femoris_long_head",
    "biceps_femoris_short_head",
    "semitendinosus",
    "semimembranosus",
    "adductor_magnus",
    "vastus_intermedius",
    "vastus_lateralis",
    "vastus_medialis",
    "rectus_femoris",
    "gracilis",
    "sartorius",
)
