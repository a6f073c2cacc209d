"""A small sample registry served on loopback, so `make run` works offline."""
