"""mimkit.benchmarks: tasks, the runner, published results, reports and speed measurements.

- `tasks`: the registry of benchmark tasks (local data reader + protocol + metric); each domain registers its
  own in `mimkit.<domain>.bench` (core's ImageNet-1K tasks in `mimkit.core.bench`).
- `runner`: `run_task(task, subject, data_root, ...)`, the one way to run a task, with the random-init comparison.
- `published`: the registry of published figures, each with its paper and table (seeded with MAE's).
- `report`: `write_table`, the one table writer (markdown, CSV, JSON), and a run's numbers beside the published
  ones (`python -m mimkit.benchmarks.report --run DIR`).
- `speed`: MAE pretraining throughput, FLOP utilisation and memory against MONAI and a plain-PyTorch
  reference (`python -m mimkit.benchmarks.speed`).
"""
