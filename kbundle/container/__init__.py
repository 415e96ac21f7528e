"""The bundle as bytes: zstd frames, the tar stream, the manifest, member names,
limits and hashing, and the streaming reader and writer. Knows nothing of Keras.
"""
