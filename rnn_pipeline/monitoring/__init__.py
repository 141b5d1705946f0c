"""Watching a champion: drift (Evidently) and the verdict, the task interface (task.py) that each task's monitoring
implements, the champion and its reference (champion.py), recording and retraining (record.py), the monitoring
store, reading the inference log."""
