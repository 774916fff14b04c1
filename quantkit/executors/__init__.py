"""Where a conversion's shards are written: by default in this process (``quantkit.writing``);
``executors.ray.RayExecutor`` runs one Ray task per shard (``pip install quantkit[ray]``).

An executor is passed to ``convert(..., executor=...)``; it provides ``task_device`` (what
``--device`` resolves to where its tasks run), ``staged`` (the staging folder, as
``writing.staged_output``, or an S3 prefix's stage, as ``writing.target.output_stage``),
``write`` (the shards, index and manifest, as ``writing.write_checkpoint``) and ``resume``. Importing this package does not import Ray.
"""
