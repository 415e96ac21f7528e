"""Custom objects: capturing them at pack, the code a bundle carries, reading source
without running it, and the import gate every load-side import goes through.
"""
