"""An installed distribution defining a custom layer (stands for a company's package)."""
