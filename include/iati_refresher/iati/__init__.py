"""IATI XML helpers: safe parsing, encodings, identifier normalisation, hashing."""
