"""The model store in Ollama's on-disk layout: names, blobs, manifests, Modelfiles,
create/copy/delete/prune/resolve, and pull/push over the OCI distribution protocol."""
