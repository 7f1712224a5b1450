"""Channels' daily statement files: the readers (DuckDB over the file) and the DuckDB matcher."""

from gasworks.adapters.statements.readers import READERS, ReadStatement, read_statement

__all__ = ["READERS", "ReadStatement", "read_statement"]
