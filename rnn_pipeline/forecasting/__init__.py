"""Time-series forecasting: its Task, leakage-free windows, evaluation against the naive and linear baselines."""
