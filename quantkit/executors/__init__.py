"""Where a conversion's shards are written: by default in this process (``quantkit.writing``);
``executors.ray.RayExecutor`` runs one Ray task per shard (``pip install quantkit[ray]``).

An executor is passed to ``convert(..., executor=...)``; it provides ``staged`` (the staging
folder, as ``writing.staged_output``) and ``write`` (the shards, index and manifest, as
``writing.write_checkpoint``). Importing this package does not import Ray.
"""
