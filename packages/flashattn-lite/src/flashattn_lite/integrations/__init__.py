"""Adapters that plug flashattn-lite into other libraries (each imported lazily)."""
