"""ml-collections configs, one file per dataset; every field is documented in genalign_jax/config.py."""
