"""`clipsearch tag` / `untag`: keywords written to XMP sidecars for what a query finds
(keywords), and zero-shot labels from the cached vectors (labels). Over search; never
imports index or serve."""
