"""relevent: an edge runtime for IEC 61850-90-10 DER scheduling."""

__version__ = "0.1.0"
