"""Generated Open Inference Protocol v2 stubs (`make proto`); never edited by hand.

NOTE: these register the `inference.*` messages in protobuf's default descriptor pool, as
tritonclient's own stubs do, so the two cannot be imported in one process. Tests drive
tritonclient from a separate process, which is what a native client is anyway.
"""
