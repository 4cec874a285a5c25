"""`make run`: every process of the platform on one machine, in the foreground, under honcho.

`services` turns the settings into the list of processes (data, unit-testable), `readiness`
holds the checks they are waited on with, `wait` is the small wrapper that holds a service back
until what it needs is up, and `supervisor` runs the list with honcho and says when all is ready.
"""
