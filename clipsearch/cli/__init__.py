"""The command line: the group and its exit codes (main), the options commands share (options),
one module per command (index, status, query, models, serve, tag) and result printing
(output). The only importer of click; nothing imports it but `__main__`."""
