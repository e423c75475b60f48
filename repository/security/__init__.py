"""Authentication primitives and the permission policy."""
