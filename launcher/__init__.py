"""`make run`: every process of the platform on one machine, in the foreground, under supervisord.

`services` turns the settings into the list of processes (data, unit-testable), `readiness`
holds the checks they are waited on with, `wait` is the small wrapper that holds a service back
until what it needs is up, `supervisord_conf` writes the list as supervisord programs,
`output` prints every program's log lines prefixed with its name, and `supervisor` runs
supervisord, says when all is ready and reports programs that stop restarting.
"""
