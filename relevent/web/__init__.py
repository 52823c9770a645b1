"""The web view: the site for an operator in a browser (docs/web.md)."""
