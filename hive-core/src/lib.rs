//! hive-core
