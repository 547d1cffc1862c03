"""The llama.cpp build pollama runs on, and how loads use it safely on this CPU.

- ``build``: where llama-cpp-python is installed, its version, its libraries,
  and a key that changes when it is rebuilt (found without importing it);
- ``info``: what the build reports about itself (compiled CPU features, extra
  CPU buffer types, backends), as the probe child returns it;
- ``kernels``: ``ExtraBuffers`` and which weights llama.cpp keeps a second,
  repacked copy of (so the memory model can count them);
- ``crash``: a runner killed by SIGILL/SIGSEGV/SIGBUS, explained in words;
- ``probe``: a child process that runs the build's kernels on a tiny model,
  first on the plain path, then with the extra buffer types;
- ``verdicts``: what was found, kept per (build, CPU) under the state directory;
- ``cpu_path``: the decision every load takes from all of the above.

Nothing here imports llama.cpp: the child side of the probe lives in
``pollama.runner.probe``.
"""
