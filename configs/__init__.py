"""ml-collections configs, one file per dataset; see configs/base.py for every field."""
