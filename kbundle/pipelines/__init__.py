"""What kbundle does, composed from the layers below: pack, read (inspect, verify,
unpack, load, check), sign, and rebuilding a bundle's environment.
"""
