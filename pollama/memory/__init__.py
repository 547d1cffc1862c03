"""The memory model, used by both processes: what a model needs where (``types``), the
estimate from its GGUF (``estimate``), the layout of layers over devices (``layout``) and
the two together (``placement``). Pure: no I/O, no llama.cpp."""
