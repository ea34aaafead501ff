//! End-to-end tests of the official `production` plugin, through `hive`, hive.toml and the real loader.
