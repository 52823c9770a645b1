"""HTTP/JSON WAN adapter: 90-10 schedules under /api/v1, OpenAPI 3.1 (docs/http.md)."""
