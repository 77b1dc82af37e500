"""clinkd."""
