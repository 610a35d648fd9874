"""Built-in target profiles (TOML data); installed as `edgekit.profiles`, read by `edgekit.targets`."""
