//! Subcommand implementations of the `wick` binary.

pub mod info;
