//! End-to-end tests of the official `development` plugin, through `hive`, hive.toml and the real loader.
