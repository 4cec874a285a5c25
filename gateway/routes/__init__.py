"""HTTP and WebSocket routes, one module per resource; each is a thin layer over a core module."""
