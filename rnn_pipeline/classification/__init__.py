"""Sequence classification (texts and numeric sequences): its Task, reading and encoding, evaluation, monitoring
descriptors."""
