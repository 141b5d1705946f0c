"""Watching a champion: drift (Evidently), the monitoring store, reading the inference log."""
