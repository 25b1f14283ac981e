"""Published results of the multimodal methods, registered with mimkit.benchmarks on import.

Only figures read in a table of their source belong here. TIP (Du et al., ECCV 2024) prints its DVM and UK Biobank
results only in the paper's tables, which could not be read here; the official repository's README (siyi-wind/TIP)
lists checkpoints, not figures. So no TIP figure is registered, and a TIP run's report shows no published column.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results

TIP_RESULTS: list[PublishedResult] = []  # none verified (see above)

register_results(TIP_RESULTS)

__all__ = ["TIP_RESULTS"]
