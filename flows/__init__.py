"""Orchestration: Prefect flows whose tasks each call one library function, and the `rnn-pipeline` CLI."""
