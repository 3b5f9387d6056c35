"""The classification engine: batches -> E-step -> posterior layers -> M-step -> class maps."""
