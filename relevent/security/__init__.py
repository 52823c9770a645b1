"""Transport security: the site's TLS policy (`tls.py`) and a small site PKI (`pki.py`).
Docs: docs/tls.md."""
