"""Load generators, scenarios and reports for the inference fleet and the gateway."""
