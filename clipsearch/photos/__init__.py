"""What a photo is to clipsearch: which files are photos (formats), how their pixels become the
model's input (preprocess), what they say about themselves (metadata, XMP sidecars), which
folders hold them (walk), and what reads them in which versions (readers). Imports only the
ground modules (errors, config)."""
