"""Published results of the multimodal methods, registered with mimkit.benchmarks on import.

Only figures read in a table of their source belong here, and none could be read (checked 2026-12-02):
- TIP (Du et al., ECCV 2024): the DVM and UK Biobank results are only in the paper's tables, which the stored
  pages do not hold (the arXiv, ECVA and ScienceStack pages give the abstract only); the official README
  (siyi-wind/TIP) lists checkpoints, not figures.
- M3AE (Chen et al., MICCAI 2022): the README (zhjohnchan/M3AE) gives download links and commands, no figures; the
  paper's VQA-RAD / SLAKE / MedVQA-2019, MELINDA and ROCO retrieval tables are not in the stored pages. Aggregator
  sites that quote single numbers are not a source.
- X-Former (arXiv 2407.13851) has no public code; Pigeon's README (YiyanXu/Pigeon) holds no result table.
So no figure is registered, and a multimodal run's report shows no published column.
"""
from __future__ import annotations

from mimkit.benchmarks.published import PublishedResult, register_results

TIP_RESULTS: list[PublishedResult] = []  # none verified (see above); the same holds for M3AE, X-Former, Pigeon

register_results(TIP_RESULTS)

__all__ = ["TIP_RESULTS"]
