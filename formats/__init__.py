"""Built-in formats.  Each module is a plugin registered through the same ``register_formats``
hook as third-party plugins, and imports only ``mconv.plugins``."""
