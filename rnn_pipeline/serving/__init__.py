"""Answering requests: the HTTP app, the inference log, batch scoring."""
