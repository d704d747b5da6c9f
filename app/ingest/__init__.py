"""Safe ingest of untrusted uploads: archives (zip, tar), images, and dataset layouts."""
