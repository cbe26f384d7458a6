"""her2kit model plugin "tiny-unet": a small network with its own shipped weights."""
