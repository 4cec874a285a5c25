"""The gateway: REST API, GitHub webhooks, live WebSocket logs and predictions over gRPC."""
