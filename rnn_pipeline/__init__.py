"""rnn-pipeline: the library layer (plain functions over data, models and stores; never imports Prefect)."""

__version__ = "0.1.0"
