"""Large files written on a background thread: the I/O under the container and the
model checks. Private.
"""
