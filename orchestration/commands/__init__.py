"""One module per ``cohort`` command; each exposes ``command``."""
