"""Many series, one global model: panel data, its evaluation, its bundle and its Task."""
