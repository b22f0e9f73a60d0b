"""Cluster side of Crucible: what runs on Ray (spec, data, models, training, search, audit)."""
