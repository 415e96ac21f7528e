"""The environment: capturing it, installed distributions, the compatibility rules
(one engine for check, load and doctor), and pinned requirements.
"""
