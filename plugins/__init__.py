"""smoothcore's built-in plugins (import name ``smoothcore_plugins``): registered through the same hooks as
third-party plugins."""
