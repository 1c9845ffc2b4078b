"""Running and checking the pipeline: the run-all supervisor, ps/stop, the audit."""
