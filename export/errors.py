"""The export step's one error: a message for the user, printed as one `export:` line."""


class ExportError(Exception):
    pass
