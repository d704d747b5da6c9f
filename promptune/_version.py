"""The SDK's version (sent in the User-Agent); its own module so the client does not import the package."""

__version__ = "0.1.0"
