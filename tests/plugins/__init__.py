"""Method modules from outside ``models/``, loaded through ``PROMPTUNE_METHOD_MODULES`` by the tests."""
