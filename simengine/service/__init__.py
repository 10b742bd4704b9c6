"""Serving: the HTTP API (FastAPI) and the web page over one `Engine`."""
