"""Ed25519 keys and the signatures over a bundle's manifest."""
