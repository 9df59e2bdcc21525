"""bench: the ssvae-bench harness (grids, timings, variance probes, result files, reports)."""
