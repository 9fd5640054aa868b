"""`clipsearch index` and `status`: the run (run), walking the cache against the folders
(indexer), worker processes and their bounds (workers, embed), a Dask cluster (cluster), the
lock, and the status report (status). Never imports search."""
