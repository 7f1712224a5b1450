"""Readers for channels' daily statement files. Each returns a whole Statement or refuses the file."""

from gasworks.adapters.statements.readers import READERS, read_statement

__all__ = ["READERS", "read_statement"]
