"""mimkit.benchmarks: tasks, protocols, published results, reports and speed measurements."""
