"""Finding photos: the query (query), its vector ranked over the packed file (rank), the rows
filters select (filters, select), and the answer with its JSON fields (answer). The single
query path for the CLI, the server and tag. Never imports index."""
