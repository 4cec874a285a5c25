"""`mlops`: the platform's command line, a thin client of the gateway's REST API and WebSocket."""
