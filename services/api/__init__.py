"""The HTTP API (FastAPI): thin routers over the domain services in ``services.core``."""
