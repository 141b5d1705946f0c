"""The Dask workers the fan-out starts: the thread caps Dask sets, without its malloc trim threshold (with it, glibc
trims the heap after nearly every batch and a small training run took 1.45 times as long here)."""

import os


def _environ() -> dict:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_dask_workers_train_without_the_malloc_trim_threshold(monkeypatch):
    import copy

    import dask
    from distributed import Client, LocalCluster

    from flows.fanout import dask_runner

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a worker inherits this process's environment
    saved = copy.deepcopy(dask.config.config)  # dask_runner sets the global config: restored after the test
    environ = dict(os.environ)  # and the nanny exports its worker's variables in this process too
    try:
        runner = dask_runner(1, None)
        with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
            seen = list(client.run(_environ).values())
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
        os.environ.clear()
        os.environ.update(environ)
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]
