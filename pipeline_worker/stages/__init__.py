"""One module per pipeline stage; each stage is a plain function a unit test can call."""
