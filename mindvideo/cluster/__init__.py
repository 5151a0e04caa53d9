"""Batch reconstruction on a Ray cluster (``pip install -e ".[ray]"``).

``mindvideo generate --data PREPARED --ray [ADDRESS]`` and :func:`generate_on_ray` cut a prepared split into shards
(one per batch of the single-process run, so the same windows meet the same noise and the output is equal bit for
bit), run them on model-holding Ray actors, write one file per shard and reuse finished shards when a job is run
again. :mod:`mindvideo.cluster.shards` holds the shard files (no Ray), :mod:`mindvideo.cluster.ray_job` the
connection, the workers and the queue (the only module importing Ray, inside its functions),
:mod:`mindvideo.cluster.job` the job itself.
"""

from __future__ import annotations

from mindvideo.cluster.job import generate_on_ray, run_generate

__all__ = ["generate_on_ray", "run_generate"]
