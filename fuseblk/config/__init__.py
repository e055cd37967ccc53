"""Mount configuration: config files, the built-in default setup, building the devices."""
