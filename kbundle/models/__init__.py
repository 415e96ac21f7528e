"""Model files by format: what a file is and says, the checks made before Keras sees it,
the one module that imports Keras or TensorFlow, and the probe.
"""
