//! End-to-end tests of the official `automation` plugin, through `hive`, hive.toml and the real loader.
