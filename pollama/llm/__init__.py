"""The server's side of one runner process: ``LlamaServer`` (the interface the scheduler
sees), the process it owns, the load loop, and the client of the runner protocol."""
