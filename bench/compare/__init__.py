"""pollama against its peers, end to end over HTTP: ``python -m bench compare``.

Modules, one concern each:

- ``stats``: medians, percentiles, per-run paired ratios, the targets (pure);
- ``report``: the markdown section and the docs splice (pure), the charts;
- ``client``: a streaming OpenAI-API client on ``http.client``;
- ``servers``: starting pollama, llama-cpp-python's server and llama-server,
  sampling their memory;
- ``workloads``: what is measured against one running server;
- ``cli``: the command, the run order, the output.
"""
