//! End-to-end tests of the official `performance` plugin, through `hive`, hive.toml and the real loader.
