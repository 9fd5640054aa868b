"""The cache: the SQLite database (store, its photo queries, schema) and the packed vector
file with its filter columns (packed, columns), derived from it. Stores bytes and numbers:
imports nothing of the model or the photos."""
