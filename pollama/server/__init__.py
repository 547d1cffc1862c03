"""The server side: model store, Modelfiles, prompt rendering, the scheduler."""
