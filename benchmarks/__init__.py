"""mimkit.benchmarks: tasks, protocols, published results, reports and speed measurements.

- `tasks`: the registry of benchmark tasks (local data reader + protocol + metric); domain subpackages
  register theirs in `mimkit.<domain>.bench`. `natural` holds the core's ImageNet-1K tasks.
- `published`: the registry of published figures, each with its paper and table (seeded with MAE's).
- `report`: a run's numbers beside the published ones (`python -m mimkit.benchmarks.report --run DIR`).
- `speed`: MAE pretraining throughput, FLOP utilisation and memory against MONAI and a plain-PyTorch
  reference (`python -m mimkit.benchmarks.speed`).
"""
