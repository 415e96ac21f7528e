"""Where outputs are written: complete or not at all, and replaced only as --force allows."""
