//! wal2json decoder (placeholder)
